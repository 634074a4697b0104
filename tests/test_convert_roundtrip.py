"""HF -> JAX -> HF is bit-exact tensor by tensor, and transformers loads the export."""

import json
import os

import ml_dtypes
import pytest
import torch
import transformers
from conftest import random_hf_model, save_hf_model, tiny_llama_config, tiny_phi3_config
from safetensors.numpy import load_file

from visregion_jax import convert
from visregion_jax.convert import jax_checkpoint


def all_tensors(directory):
  index = os.path.join(directory, "model.safetensors.index.json")
  files = (sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index)
           else ["model.safetensors"])
  out = {}
  for f in files:
    out.update(load_file(os.path.join(directory, f)))
  return out


def assert_bit_exact(a: dict, b: dict):
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    assert a[k].tobytes() == b[k].tobytes(), k


CASES = {
    "llama_fp32": (tiny_llama_config(num_key_value_heads=2, attention_bias=True), torch.float32),
    "llama_bf16": (tiny_llama_config(tie_word_embeddings=True), torch.bfloat16),
    "phi3_fp32": (tiny_phi3_config(), torch.float32),
    "phi3_bf16": (tiny_phi3_config(), torch.bfloat16),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_bit_exact_and_loadable(name, tmp_path):
  config, dtype = CASES[name]
  hf = random_hf_model(config).to(dtype)
  src = save_hf_model(hf, tmp_path / "src")
  model = convert.from_hf(src)
  dst = convert.to_hf(model, str(tmp_path / "dst"))
  original = all_tensors(src)
  assert_bit_exact(original, all_tensors(dst))
  if dtype == torch.bfloat16:
    assert next(iter(original.values())).dtype == ml_dtypes.bfloat16
  loaded = transformers.AutoModelForCausalLM.from_pretrained(dst)
  assert type(loaded) is type(hf)
  assert loaded.dtype == dtype
  reference = transformers.AutoModelForCausalLM.from_pretrained(src)  # same load path as `loaded`
  ids = torch.tensor([[5, 9, 17, 33, 2, 64]])
  with torch.no_grad():
    torch.testing.assert_close(loaded(ids).logits, reference(ids).logits, atol=0, rtol=0)


def test_sharded_export_and_import(tmp_path):
  """Above the shard limit the export writes an index; the import streams it back."""
  hf = random_hf_model(tiny_llama_config(num_key_value_heads=2))
  src = save_hf_model(hf, tmp_path / "src")
  model = convert.from_hf(src)
  dst = convert.to_hf(model, str(tmp_path / "sharded"), max_shard_bytes=60_000)
  index = json.load(open(os.path.join(dst, "model.safetensors.index.json")))
  assert len(set(index["weight_map"].values())) > 3
  assert_bit_exact(all_tensors(src), all_tensors(dst))
  again = convert.to_hf(convert.from_hf(dst), str(tmp_path / "single"))
  assert_bit_exact(all_tensors(src), all_tensors(again))


def test_legacy_bin_import(tmp_path):
  hf = random_hf_model(tiny_llama_config())
  torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
  hf.config.save_pretrained(tmp_path)
  model = convert.from_hf(str(tmp_path))
  out = convert.to_hf(model, str(tmp_path / "out"))
  ref = {k: v.numpy() for k, v in hf.state_dict().items()}
  assert_bit_exact(ref, all_tensors(out))


def test_jax_checkpoint_round_trip_via_cli(tmp_path):
  """from-hf to an orbax directory, to-hf back: the CLI pair is lossless too."""
  from visregion_jax.convert.__main__ import main  # pylint: disable=import-outside-toplevel
  hf = random_hf_model(tiny_phi3_config()).to(torch.bfloat16)
  src = save_hf_model(hf, tmp_path / "src")
  assert main(["from-hf", "--src", src, "--dst", str(tmp_path / "ckpt")]) == 0
  assert jax_checkpoint.is_model_checkpoint(str(tmp_path / "ckpt"))
  assert main(["to-hf", "--src", str(tmp_path / "ckpt"), "--dst", str(tmp_path / "hf")]) == 0
  assert_bit_exact(all_tensors(src), all_tensors(str(tmp_path / "hf")))
