"""The dry run's per-device figures against hand computations from the architectures'
published numbers, on 8 simulated devices (a subprocess: the device count is fixed
when jax starts), plus the config.json path and the fast abstract build."""

import json
import math
import os
import subprocess
import sys

import pytest
from flax import nnx

from visregion_jax import model_spec, tiled_loss
from visregion_jax.config.loading import load_config
from visregion_jax.errors import VisRegionError
from visregion_jax.models.lvlm import LVLM
from visregion_jax.plan import TrainingPlan
from visregion_jax.train import dry_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2 ** 30

# One process, 8 CPU devices: the CLI prints the 7B table, then each case's numbers as JSON.
SCRIPT = r"""
import json, sys
from visregion_jax.config.loading import load_config
from visregion_jax.train import dry_run
from visregion_jax.train.__main__ import main
assert main(["--config", "configs/llava15_7b_region.py", "--config.dry_run=True"]) == 0
for name, args in json.loads(sys.argv[1]).items():
  e = dry_run.estimate(load_config(args, "test"))
  print("RESULT " + json.dumps({name: e}))
"""
CASES = {
    "7b_fsdp8": ["--config", "configs/llava15_7b_region.py"],
    "7b_fsdp4_tensor2": ["--config", "configs/llava15_7b_region.py", "--config.mesh.fsdp=4",
                         "--config.mesh.tensor=2"],
    "7b_loss_untiled": ["--config", "configs/llava15_7b_region.py", "--config.model.loss_tiles=1"],
    "13b_fsdp8": ["--config", "configs/llava15_13b_region.py"],
    "bunny_llama3": ["--config", "configs/bunny_llama3_8b_region.py"],
    "bunny_phi3": ["--config", "configs/bunny_phi3_mini_region.py"],
    "7b_full": ["--config", "configs/llava15_7b_full.py"],
    "stage1": ["--config", "configs/stage1_projector.py"],
}


@pytest.fixture(scope="module")
def eight_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(CASES)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  out, results = run.stdout, {}
  for line in out.splitlines():
    if line.startswith("RESULT "):
      results.update(json.loads(line[len("RESULT "):]))
  return out, results


def llama(e: int, kv: int, i: int, layers: int, vocab: int) -> int:
  """Llama decoder: q, o (E x E), k, v (E x KV), gate, up, down (E x I), two norms per
  layer; embeddings and LM head (vocab x E); final norm."""
  return layers * (2 * e * e + 2 * e * kv + 3 * e * i + 2 * e) + 2 * vocab * e + e


def vicuna(e: int, i: int, layers: int) -> int:
  """Vicuna-v1.5 in llava-hf: full KV heads, vocabulary 32064."""
  return llama(e, e, i, layers, 32064)


def clip_l_336() -> int:
  """CLIP ViT-L/14-336: 24 layers (4 biased D x D, fc1/fc2 biased, 2 LayerNorms), bias-free
  14x14 patch conv, class token, 577 positions, pre and post LayerNorm."""
  d, i = 1024, 4096
  layer = 4 * (d * d + d) + (d * i + i) + (i * d + d) + 2 * 2 * d
  return 24 * layer + 14 * 14 * 3 * d + d + 577 * d + 2 * 2 * d


def siglip_so400m_384() -> int:
  """SigLIP-so400m/14-384: 27 layers like CLIP's, a biased patch conv, 729 positions, no
  CLS and no pre-LayerNorm, post LayerNorm, and the pooling head (probe, attention,
  LayerNorm, MLP) that the checkpoint holds."""
  d, i = 1152, 4304
  mlp = d * i + i + i * d + d
  layer = 4 * (d * d + d) + mlp + 2 * 2 * d
  head = d + 4 * (d * d + d) + 2 * d + mlp
  return 27 * layer + 14 * 14 * 3 * d + d + 729 * d + 2 * d + head


def projector(e: int, vision: int = 1024) -> int:
  return vision * e + e + e * e + e


def lora(e: int, i: int, layers: int, r: int = 128) -> int:
  """A [in, r] and B [r, out] on q, k, v, o (E -> E) and gate, up (E -> I), down (I -> E)."""
  return layers * r * (4 * (e + e) + 2 * (e + i) + (i + e))


def lora_per_device(e: int, i: int, layers: int, fsdp: int, tensor: int, r: int = 128) -> int:
  """float32 bytes on one device. Embed dimensions go over fsdp, heads / MLP dimensions
  over tensor, rank dimensions nowhere: A of q, k, v, gate, up and B of o, down have an
  embed side (7 x E x r); A of o (heads), A of down (MLP), B of q, k, v (heads) and B of
  gate, up (MLP) have a tensor side (4E + 3I) x r."""
  return 4 * layers * r * (7 * e // fsdp + (4 * e + 3 * i) // tensor)


def close(got, want, rel=0.01):
  assert got == pytest.approx(want, rel=rel), (got, want)


@pytest.mark.parametrize("case, fsdp, tensor", [
    ("7b_fsdp8", 8, 1), ("7b_fsdp4_tensor2", 4, 2)])
def test_llava15_7b_on_8_devices(eight_devices, case, fsdp, tensor):
  e = eight_devices[1][case]
  assert e["num_devices"] == 8 and e["mesh"] == {"data": 1, "fsdp": fsdp, "tensor": tensor}
  assert e["region_layers"] == [1, 5, 9, 13, 19, 23, 27, 31]
  frozen = vicuna(4096, 11008, 32) + clip_l_336()
  close(e["param_counts"]["frozen"], frozen)
  close(e["param_counts"]["projector"], projector(4096))
  close(e["param_counts"]["lora"], lora(4096, 11008, 8))
  per = e["bytes_per_device"]
  close(per["params_frozen"], frozen * 2 / 8)  # bf16; every large matrix is split 8 ways
  close(per["params_projector"], projector(4096) * 4 / fsdp)  # kernels [in, embed]: fsdp only
  lora_bytes = lora_per_device(4096, 11008, 8, fsdp, tensor)
  close(per["params_lora"], lora_bytes)
  trainable = lora_bytes + projector(4096) * 4 / fsdp
  close(per["optimizer_state"], 2 * trainable)
  close(per["gradients"], 2 * trainable)
  micro = 128 // fsdp
  act = e["activation_terms"]
  assert act["micro_batch"] == micro and act["seq_len"] == 2048
  assert act["stored"] == 32 * micro * 2048 * 4096 * 2  # remat: L layer inputs in bf16
  # fp32 logits of micro x 2048 x 32064 exceed 64 MiB: model.loss_tiles=0 cuts each
  # row into ceil(micro * 2048 * 32064 * 4 / 64 MiB) tiles
  tiles = math.ceil(micro * 2048 * 32064 * 4 / tiled_loss.AUTO_TILE_BYTES)
  assert act["loss_tile"] == math.ceil(2048 / tiles)
  assert act["loss_working_set"] == micro * act["loss_tile"] * 32064 * (2 + 4 + 4)


def test_untiled_loss_working_set(eight_devices):
  """model.loss_tiles=1: the whole logits, B*T*V*(b+8); the rest of the estimate unchanged."""
  untiled, tiled = eight_devices[1]["7b_loss_untiled"], eight_devices[1]["7b_fsdp8"]
  act = untiled["activation_terms"]
  assert act["loss_tile"] == 2048 and act["loss_working_set"] == 16 * 2048 * 32064 * (2 + 4 + 4)
  assert act["stored"] == tiled["activation_terms"]["stored"]
  assert untiled["bytes_per_device"]["params_frozen"] == tiled["bytes_per_device"]["params_frozen"]


def test_llava15_13b_on_8_devices(eight_devices):
  e = eight_devices[1]["13b_fsdp8"]
  assert e["region_layers"] == [1, 5, 9, 13, 17, 23, 27, 31, 35, 39]
  frozen = vicuna(5120, 13824, 40) + clip_l_336()
  close(e["param_counts"]["frozen"], frozen)
  close(e["param_counts"]["lora"], lora(5120, 13824, 10))
  per = e["bytes_per_device"]
  close(per["params_frozen"], frozen * 2 / 8)
  close(per["params_lora"], lora_per_device(5120, 13824, 10, 8, 1))
  close(per["params_projector"], projector(5120) * 4 / 8)
  assert e["activation_terms"]["stored"] == 40 * 16 * 2048 * 5120 * 2


@pytest.mark.parametrize("case, frozen, trainable", [
    # the builder adds one <image> row to the decoder's vocabulary
    ("bunny_llama3", llama(4096, 1024, 14336, 32, 128257) + siglip_so400m_384(),
     {"projector": projector(4096, 1152), "lora": 8 * 128 * (2 * 8192 + 2 * 5120 + 3 * 18432)}),
    ("bunny_phi3", llama(3072, 3072, 8192, 32, 32065) + siglip_so400m_384(),
     {"projector": projector(3072, 1152), "lora": lora(3072, 8192, 8)}),
    ("7b_full", 2 * 32064 * 4096 + 4096 + clip_l_336(),
     {"projector": projector(4096), "region": vicuna(4096, 11008, 32) - 2 * 32064 * 4096 - 4096}),
    ("stage1", vicuna(4096, 11008, 32) + clip_l_336(), {"projector": projector(4096)}),
])
def test_other_paper_configs(eight_devices, case, frozen, trainable):
  """Bunny presets, the full fine-tune (every decoder layer, embeddings and head frozen) and
  stage 1 (projector only)."""
  counts = eight_devices[1][case]["param_counts"]
  assert set(counts) == {"frozen", *trainable}
  close(counts["frozen"], frozen)
  for label, n in trainable.items():
    close(counts[label], n)


def test_cli_prints_the_table(eight_devices):
  out = eight_devices[0]
  assert "8 devices, mesh data=1 fsdp=8 tensor=1" in out
  frozen_line = next(line for line in out.splitlines() if "frozen parameters (bfloat16)" in line)
  count, gib = frozen_line.split()[-3], float(frozen_line.split()[-2])
  frozen = vicuna(4096, 11008, 32) + clip_l_336()
  assert int(count.replace(",", "")) == pytest.approx(frozen, rel=0.01)
  assert gib == pytest.approx(frozen * 2 / 8 / GIB, rel=0.01)


# --- in this process (one device) ---------------------------------------------------
TINY_TEXT = {"model_type": "llama", "vocab_size": 96, "hidden_size": 32, "intermediate_size": 48,
             "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2}
TINY_VISION = {"model_type": "clip_vision_model", "hidden_size": 16, "intermediate_size": 24,
               "num_hidden_layers": 3, "num_attention_heads": 2, "image_size": 8, "patch_size": 4}


def tiny_config(tmp_path, *, llava: bool, **region):
  init = tmp_path / "model"
  init.mkdir()
  if llava:
    d = {"model_type": "llava", "text_config": TINY_TEXT, "vision_config": TINY_VISION,
         "image_token_index": 95}
  else:
    d = TINY_TEXT
    tower = tmp_path / "tower"
    tower.mkdir()
    (tower / "config.json").write_text(json.dumps(TINY_VISION))
  (init / "config.json").write_text(json.dumps(d))
  args = ["--config", os.path.join(ROOT, "configs/llava15_7b_region.py"), f"--config.model.init_from={init}",
          "--config.train.batch_size=4", "--config.data.max_length=16", "--config.model.dtype=float32"]
  if not llava:
    args.append(f"--config.model.vision_tower={tmp_path / 'tower'}")
  args += [f"--config.region.{k}={v}" for k, v in region.items()]
  return load_config(args, "test")


def tiny_counts(vocab: int, rank: int, region_layers: int) -> dict:
  """By hand: the tiny decoder (E=32, KV dim 16, I=48), tower (D=16, I=24, 4 patches + CLS)
  and projector 16 -> 32 -> 32."""
  e, kv, i = 32, 16, 48
  layer = 2 * e * e + 2 * e * kv + 3 * e * i + 2 * e
  decoder = 4 * layer + 2 * vocab * e + e
  d, vi = 16, 24
  tower = 3 * (4 * (d * d + d) + 2 * d * vi + vi + d + 4 * d) + 4 * 4 * 3 * d + d + 5 * d + 4 * d
  lora_params = region_layers * rank * (2 * (e + e) + 2 * (e + kv) + 2 * (e + i) + (i + e))
  return {"frozen": decoder + tower, "projector": 16 * e + e + e * e + e, "lora": lora_params}


def test_llava_config_json(tmp_path):
  e = dry_run.estimate(tiny_config(tmp_path, llava=True, lora_rank=8))
  assert e["source"] == str(tmp_path / "model") and e["region_layers"] == [1]
  assert e["param_counts"] == tiny_counts(96, 8, 1)
  per = e["bytes_per_device"]
  assert per["params_frozen"] == 4 * tiny_counts(96, 8, 1)["frozen"]  # one device, float32
  assert per["optimizer_state"] == 8 * (tiny_counts(96, 8, 1)["lora"] + tiny_counts(96, 8, 1)["projector"])


def test_decoder_and_tower_config_json(tmp_path):
  """A decoder joined with a tower gets the builder's extra <image> row; a full update
  makes the region layers' own weights trainable."""
  e = dry_run.estimate(tiny_config(tmp_path, llava=False, lora_rank=0))
  want = tiny_counts(97, 0, 1)
  region = (2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 48 + 2 * 32)
  assert e["param_counts"] == {"frozen": want["frozen"] - region, "projector": want["projector"],
                               "region": region}


def test_scored_region_is_sized_before_the_probe(tmp_path):
  """`scored` layers are picked when training builds the model; the dry run counts as
  many layers (the lowest: no choice needs more memory) and says so."""
  e = dry_run.estimate(tiny_config(tmp_path, llava=True, lora_rank=8, strategy="scored", fraction=0.5))
  assert e["scored"] and e["param_counts"] == tiny_counts(96, 8, 2)
  assert "region layers (2 of 4): chosen by the scored probe when training starts" in dry_run.format_report(e)


def test_unknown_model_is_a_config_error(tmp_path):
  config = tiny_config(tmp_path, llava=True)
  with config.unlocked():
    config.model.init_from = str(tmp_path / "missing")
    config.model.architecture = "llava-2"
  with pytest.raises(VisRegionError, match="model.architecture"):
    dry_run.estimate(config)


def test_layer_clones_equal_one_trace():
  """The fast abstract build holds exactly what one nnx.eval_shape of the model holds."""
  spec = {"llava": {"model_type": "llava", "text_config": TINY_TEXT, "vision_config": TINY_VISION,
                    "image_token_index": 95}}
  cfg = model_spec.model_config(spec, None, "float32")
  plan = TrainingPlan(region_layers=(1, 3), lora_rank=4, lora_alpha=8.0, lora_dropout=0.1)

  def one_trace():
    model = LVLM(cfg, rngs=nnx.Rngs(0))
    plan.prepare(model, 0)
    return model

  def describe(model):
    return [(path, v.get_value().shape, v.get_value().dtype, type(v).__name__,
             v.get_metadata().get("logical_axes")) for path, v in nnx.to_flat_state(nnx.state(model))]

  assert describe(dry_run.abstract_model(cfg, plan, 0)) == describe(nnx.eval_shape(one_trace))
