"""Exports checked against references that share none of our code.

(a) An original LLaVA / Bunny checkpoint with a PEFT LoRA adapter, imported and
exported to llava-hf, against PEFT's own `merge_and_unload()` put into transformers'
llava model and saved by transformers: tensor by tensor and by logits with images.
(b) A pruned llava-hf model, exported, against transformers' model with the same
decoder layers deleted: tensors, logits and greedy generation.
"""

import copy

import jax.numpy as jnp
import numpy as np
import torch
import transformers
from conftest import random_llava_model, tiny_phi3_config
from flax import nnx
from test_convert_roundtrip import all_tensors
from test_llava_original import (
  LLAMA_TARGETS,
  PHI3_TARGETS,
  decoder_of,
  new_projector,
  projector_state,
  reference_llava,
  tiny_llava_llama,
  write_adapter,
  write_original,
  write_vision_tower,
)
from test_lvlm import IMAGE_TOKEN, batch_with_images, hf_llava_logits, llava_model, vision_config

from visregion_jax import convert, generate, prune

MERGE_ATOL = 1e-6  # bit-exact on this machine; two BLAS libraries need not sum B @ A alike


@nnx.jit
def forward(model, ids, pixels, mask):
  return model(ids, pixels, mask)


def ours_logits(model, ids, mask, pixels):
  """Compiled whole: op-by-op dispatch of a fresh model costs seconds per call."""
  return np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask)))


def max_error(got, want, mask) -> float:
  return float(np.abs(got - want)[mask.astype(bool)].max())


def assert_tensors_match(ours: dict, ref: dict, base: dict, merged_atol: float):
  """Same names, dtypes and shapes; tensors LoRA left alone bit-exact, merged ones within
  `merged_atol` of the reference (and visibly moved from the base, so the check bites)."""
  assert sorted(ours) == sorted(ref)
  moved = []
  for name, want in ref.items():
    got = ours[name]
    assert got.dtype == want.dtype and got.shape == want.shape, name
    if np.array_equal(want, base[name]):
      assert got.tobytes() == want.tobytes(), name
    else:
      moved.append(name)
      np.testing.assert_allclose(got, want, rtol=0, atol=merged_atol, err_msg=name)
      assert np.abs(want - base[name]).max() > 100 * merged_atol, name
  return moved


# --- (a) original LLaVA / Bunny + PEFT LoRA ---------------------------------------------------


def check_against_peft(hf, tmp_path, lora: dict, *, projector=None, seed=0):
  """Imports original + adapter, exports to llava-hf, compares with PEFT's merge; returns
  the names of the tensors the adapter (or the projector override) changed."""
  model_type = {"llama": "llava_llama", "phi3": "bunny-phi3"}[hf.config.text_config.model_type]
  src = write_original(hf, tmp_path / "original", model_type)
  vision = write_vision_tower(hf, tmp_path / "tower")
  adapter = tmp_path / "adapter"
  merged = write_adapter(decoder_of(hf), adapter, seed=seed, **lora)
  if projector is not None:
    torch.save({"base_model.model." + k: v for k, v in projector.items()},
               adapter / "non_lora_trainables.bin")
  ref = reference_llava(hf, merged, projector_state(hf) if projector is None else projector)
  ref.save_pretrained(tmp_path / "reference")
  hf.save_pretrained(tmp_path / "base")

  ours = convert.from_llava_original(src, vision_tower=vision, adapter=str(adapter),
                                     image_token_id=IMAGE_TOKEN)
  out = convert.to_hf(ours, str(tmp_path / "ours"))
  moved = assert_tensors_match(all_tensors(out), all_tensors(str(tmp_path / "reference")),
                               all_tensors(str(tmp_path / "base")), MERGE_ATOL)

  ids, mask, pixels = batch_with_images(hf, np.random.RandomState(seed), (1, 0, 2))
  want = hf_llava_logits(ref, ids, mask, pixels)
  assert max_error(ours_logits(ours, ids, mask, pixels), want, mask) <= 1e-4
  loaded = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
  assert max_error(hf_llava_logits(loaded, ids, mask, pixels), want, mask) <= 1e-4
  # The adapter matters at this tolerance: the base model's logits are far off.
  assert max_error(hf_llava_logits(hf, ids, mask, pixels), want, mask) > 1e-2
  return moved


def test_llava_lora_and_projector_export_equals_peft_merge(tmp_path):
  """LoRA on layers 1 and 3 only, and non_lora_trainables replacing the projector."""
  hf = tiny_llava_llama()
  lora = dict(r=8, lora_alpha=16, target_modules=LLAMA_TARGETS, layers_to_transform=[1, 3])
  moved = check_against_peft(hf, tmp_path, lora, projector=new_projector(hf, seed=5), seed=1)
  layers = {name.split(".layers.")[1].split(".")[0] for name in moved if ".layers." in name}
  assert layers == {"1", "3"}
  assert {n for n in moved if "projector" in n} == {f"multi_modal_projector.linear_{i}.{p}"
                                                    for i in (1, 2) for p in ("weight", "bias")}


def test_bunny_phi3_fused_rslora_export_equals_peft_merge(tmp_path):
  """Phi-3 stores q/k/v and gate/up fused: PEFT's factors span the fused matrices. With
  rsLoRA, scaled by alpha / sqrt(r) (a merge with alpha / r would be off by 2.8x)."""
  hf = llava_model("siglip", "phi3", seed=3, vision_feature_select_strategy="full")
  lora = dict(r=8, lora_alpha=32, use_rslora=True, target_modules=PHI3_TARGETS)
  moved = check_against_peft(hf, tmp_path, lora, seed=2)
  assert {n.rsplit(".", 2)[-2] for n in moved} == {"qkv_proj", "gate_up_proj", "o_proj", "down_proj"}


# --- (b) pruned llava-hf ----------------------------------------------------------------------


def transformers_without_layers(llava, removed: set):
  """transformers' llava model with decoder layers deleted, the rest renumbered for its cache."""
  ref = copy.deepcopy(llava)
  decoder = ref.model.language_model
  kept = [layer for i, layer in enumerate(decoder.layers) if i not in removed]
  for new, layer in enumerate(kept):
    layer.self_attn.layer_idx = new
  decoder.layers = torch.nn.ModuleList(kept)
  text = ref.config.text_config
  text.num_hidden_layers = len(kept)
  if getattr(text, "layer_types", None):
    text.layer_types = [t for i, t in enumerate(text.layer_types) if i not in removed]
  return ref


def test_pruned_llava_equals_transformers_with_layers_deleted(tmp_path):
  """SigLIP + Phi-3 (fused qkv / gate_up in the export), layers 1 and 3 of 5 dropped."""
  config = transformers.LlavaConfig(vision_config=vision_config("siglip"), image_token_id=IMAGE_TOKEN,
                                    text_config=tiny_phi3_config(num_hidden_layers=5))
  hf = random_llava_model(config, seed=4)
  hf.save_pretrained(tmp_path / "src")
  pruned = prune.drop_layers(convert.from_hf(str(tmp_path / "src")), [1, 3])
  ref = transformers_without_layers(hf, {1, 3})
  ref.save_pretrained(tmp_path / "reference")
  out = convert.to_hf(pruned, str(tmp_path / "pruned"))
  want_tensors, got_tensors = all_tensors(str(tmp_path / "reference")), all_tensors(out)
  assert sorted(got_tensors) == sorted(want_tensors)
  for name, want in want_tensors.items():
    assert got_tensors[name].tobytes() == want.tobytes(), name

  ids, mask, pixels = batch_with_images(hf, np.random.RandomState(5), (1, 0, 2))
  want = hf_llava_logits(ref, ids, mask, pixels)
  assert max_error(ours_logits(pruned, ids, mask, pixels), want, mask) <= 1e-4
  loaded = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
  assert loaded.config.text_config.num_hidden_layers == 3
  assert max_error(hf_llava_logits(loaded, ids, mask, pixels), want, mask) <= 1e-4

  ids, mask, pixels = batch_with_images(hf, np.random.RandomState(6), (1, 2))
  got = generate.generate(pruned, ids, mask, max_new_tokens=8, eos_token_ids=[], pixel_values=pixels)
  with torch.no_grad():
    tokens = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2)), do_sample=False,
                          max_new_tokens=8, min_new_tokens=8, pad_token_id=0).numpy()[:, ids.shape[1]:]
  np.testing.assert_array_equal(got, tokens)
