"""The model FLOPs of a training step (train/flops.py), the device peak
(train/peak_flops.py) and the MFU a run logs.

The independent count is XLA's own: `cost_analysis()` of the compiled training step.
XLA counts what the dense step computes, so the comparison adds back what we leave out
on purpose: the masked half of the T x T attention scores (rows here have no padding,
so that is the only dense-vs-real difference; every image slot holds a real image).
XLA also counts elementwise work, which the sizes below (hidden 256, matmuls of
256 x 768) keep to 1-2% of the total.
"""

import json
import os

import jax
import numpy as np
import optax
import pytest
import train_fixtures
from flax import nnx
from test_progress import scalars

from visregion_jax.config.loading import load_config
from visregion_jax.errors import VisRegionError
from visregion_jax.models.config import DecoderConfig
from visregion_jax.models.llama import build_decoder
from visregion_jax.models.lvlm import LVLM, LVLMConfig
from visregion_jax.models.vision import VisionConfig
from visregion_jax.plan import TrainingPlan
from visregion_jax.train import loop, peak_flops
from visregion_jax.train.flops import causal_pairs, segment_lengths, step_flops
from visregion_jax.train.step import make_train_step

TEXT = DecoderConfig(vocab_size=512, hidden_size=256, intermediate_size=768, num_layers=3,
                     num_heads=4, num_kv_heads=2, head_dim=64)
VISION = VisionConfig(kind="clip", hidden_size=256, intermediate_size=768, num_layers=3, num_heads=4,
                      image_size=56, patch_size=7)
LVLM_CONFIG = LVLMConfig(text=TEXT.replace(num_layers=2, tie_word_embeddings=True), vision=VISION,
                         image_token_id=TEXT.vocab_size - 1)
ROWS, LENGTH = 4, 64
RANK = 64  # LoRA's share of the step is then ~15%, so its terms are seen


def text_batch(rows: int = ROWS, length: int = LENGTH) -> dict:
  ids = np.random.RandomState(0).randint(0, TEXT.vocab_size, size=(rows, length)).astype(np.int32)
  return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids}


def image_batch() -> dict:
  """Rows of 2 x LENGTH tokens, each with one image (its 64 feature tokens after 4 text tokens)."""
  batch = text_batch(length=2 * LENGTH)
  batch["input_ids"] = np.minimum(batch["input_ids"], LVLM_CONFIG.image_token_id - 1)
  batch["input_ids"][:, 4:4 + LVLM_CONFIG.num_image_tokens] = LVLM_CONFIG.image_token_id
  pixels = np.random.RandomState(1).normal(size=(ROWS, VISION.image_size, VISION.image_size, 3))
  return {**batch, "pixel_values": pixels.astype(np.float32), "image_mask": np.ones(ROWS, bool)}


def prepared(model, plan: TrainingPlan):
  plan.prepare(model, seed=0)
  return model


def xla_flops(model, plan: TrainingPlan, batch: dict) -> float:
  graphdef, params, frozen, rest = plan.split(model)
  tx = optax.adamw(1e-3)
  step = jax.jit(make_train_step(graphdef, tx, accum_steps=1, seed=0))
  compiled = step.lower(params, frozen, rest, tx.init(params), batch, 0).compile()
  return float(compiled.cost_analysis()["flops"])


def masked_scores(batch: dict, layers: int, grads_from: int) -> float:
  """FLOPs XLA spends on the masked (future) half of the T x T scores: forward in every
  layer, backward (2x) in layers from `grads_from` up; 4 FLOPs per head dim and pair."""
  rows, t = batch["input_ids"].shape
  width = TEXT.num_heads * TEXT.head_dim
  per_layer = rows * (t * t - t * (t + 1) // 2) * 4 * width
  return per_layer * sum(3 if layer >= grads_from else 1 for layer in range(layers))


CASES = {  # name: (model builder, plan, batch builder, lowest layer that runs backward)
    "full": (lambda: build_decoder(TEXT), TrainingPlan(region_layers=(0, 1, 2)), text_batch, 0),
    "region": (lambda: build_decoder(TEXT), TrainingPlan(region_layers=(1,)), text_batch, 1),
    "lora_region": (lambda: build_decoder(TEXT), TrainingPlan(region_layers=(1,), lora_rank=RANK, lora_alpha=8.0),
                    text_batch, 1),
    # the projector trains, so every decoder layer runs backward; the tower forward only
    "lvlm_lora_region": (lambda: LVLM(LVLM_CONFIG, rngs=nnx.Rngs(0)),
                         TrainingPlan(region_layers=(1,), lora_rank=RANK, lora_alpha=8.0), image_batch, 0),
    # the tower trains too: its two layers that the feature layer -2 needs run backward
    "lvlm_region_vision": (lambda: LVLM(LVLM_CONFIG, rngs=nnx.Rngs(0)),
                           TrainingPlan(region_layers=(1,), train_vision=True), image_batch, 0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_step_flops_match_xla_cost_analysis(name):
  build, plan, make_batch, grads_from = CASES[name]
  model, batch = prepared(build(), plan), make_batch()
  ours = step_flops(model, plan)(batch)
  xla = xla_flops(model, plan, batch)
  dense = ours + masked_scores(batch, len(model.layers), grads_from)
  assert xla == pytest.approx(dense, rel=0.05), f"XLA {xla:.4g}, ours with the masked scores {dense:.4g}"


def linear_flops(config: DecoderConfig) -> dict:
  """Forward FLOPs per token of each linear of a decoder layer: 2 x in x out."""
  h, m = config.hidden_size, config.intermediate_size
  q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
  return {"q": 2 * h * q, "k": 2 * h * kv, "v": 2 * h * kv, "o": 2 * q * h,
          "gate": 2 * h * m, "up": 2 * h * m, "down": 2 * m * h}


def test_region_step_skips_exactly_the_gradients_it_does_not_need():
  """Region (1,) of 3 layers against a full update: layer 0 runs no backward at all (no
  weight gradient, no input gradient, no attention backward), layer 2 no weight gradient."""
  batch = text_batch()
  tokens = batch["attention_mask"].sum()
  pairs = causal_pairs(segment_lengths(batch)).sum()
  layer = sum(linear_flops(TEXT).values())
  attention = 4 * TEXT.num_heads * TEXT.head_dim
  plans = {name: CASES[name][1] for name in ("full", "region")}
  flops = {name: step_flops(prepared(build_decoder(TEXT), plan), plan)(batch) for name, plan in plans.items()}
  # each gradient of a matmul (input or weight) costs what its forward does
  skipped = tokens * (layer + layer) + pairs * 2 * attention  # layer 0: weight and input grads, attention's
  skipped += tokens * layer                                   # layer 2: weight grads
  assert flops["full"] - flops["region"] == skipped
  # A full step: 3x forward in every layer (layer 0's trainable input norm needs q/k/v's input
  # grads too), the frozen head 2x (forward and input grads).
  head = 2 * TEXT.hidden_size * TEXT.vocab_size
  assert flops["full"] == tokens * (3 * 3 * layer + 2 * head) + pairs * 3 * 3 * attention


def test_lora_region_step_by_hand():
  """LoRA (rank r) on layer 1 of 3, the lowest trainable layer: its frozen input norm means
  q/k/v need no input gradient (base or LoRA); every LoRA factor has a weight gradient."""
  plan = CASES["lora_region"][1]
  batch = text_batch()
  tokens = batch["attention_mask"].sum()
  pairs = causal_pairs(segment_lengths(batch)).sum()
  linears = linear_flops(TEXT)
  attention = 4 * TEXT.num_heads * TEXT.head_dim
  head = 2 * TEXT.hidden_size * TEXT.vocab_size
  h, m, r = TEXT.hidden_size, TEXT.intermediate_size, RANK
  dims = {"q": (h, TEXT.num_heads * TEXT.head_dim), "k": (h, TEXT.num_kv_heads * TEXT.head_dim),
          "v": (h, TEXT.num_kv_heads * TEXT.head_dim), "o": (TEXT.num_heads * TEXT.head_dim, h),
          "gate": (h, m), "up": (h, m), "down": (m, h)}
  per_token = 3 * sum(linears.values()) + head             # forward of the base model
  # a gradient of a matmul (input or weight) costs what its forward does
  per_token += sum(linears[n] for n in ("o", "gate", "up", "down"))  # layer 1: input grads (W frozen)
  per_token += sum(linears.values()) + head                 # layer 2 and the head: input grads
  for name, (k, n) in dims.items():                         # layer 1's LoRA factors
    x_grad = name in ("o", "gate", "up", "down")
    per_token += (2 * k * r + 2 * r * n) + (2 * r * n + 2 * r * n + 2 * k * r) + x_grad * 2 * k * r
  expected = tokens * per_token + pairs * attention * (1 + 3 + 3)
  assert step_flops(prepared(build_decoder(TEXT), plan), plan)(batch) == expected


def test_segments_count_real_tokens_only():
  plan = CASES["region"][1]
  counter = step_flops(prepared(build_decoder(TEXT), plan), plan)
  rows = text_batch(rows=3, length=8)
  rows["attention_mask"][:] = 0
  for row, n in enumerate((5, 3, 8)):
    rows["attention_mask"][row, :n] = 1
  packed = text_batch(rows=2, length=12)
  packed["segment_ids"] = np.array([[1] * 5 + [2] * 3 + [0] * 4, [1] * 8 + [0] * 4], np.int32)
  assert sorted(segment_lengths(rows)) == sorted(segment_lengths(packed)) == [3, 5, 8]
  assert counter(packed) == counter(rows)  # packing moves tokens, not work
  left_padded = {**rows, "attention_mask": rows["attention_mask"][:, ::-1].copy()}
  assert counter(left_padded) == counter(rows)
  with pytest.raises(VisRegionError, match="segment_ids"):
    counter({**packed, "segment_ids": -packed["segment_ids"]})


@pytest.mark.parametrize("window", [None, 1, 3, 8, 20])
def test_causal_pairs_are_the_mask_entries(window):
  lengths = np.array([1, 2, 7, 16])
  for length, pairs in zip(lengths, causal_pairs(lengths, window)):
    q, k = np.arange(length)[:, None], np.arange(length)[None, :]
    mask = (k <= q) & ((q - k) < window if window else True)
    assert pairs == mask.sum()


@pytest.mark.parametrize("kind,tflops", [("TPU v4", 275), ("TPU v5 lite", 197), ("TPU v5", 459),
                                         ("TPU v6 lite", 918), ("NVIDIA A100-SXM4-80GB", 312),
                                         ("NVIDIA A100 80GB PCIe", 312), ("NVIDIA H100 80GB HBM3", 989.5),
                                         ("NVIDIA H100 PCIe", 756.5), ("NVIDIA H200", 989.5),
                                         ("NVIDIA H200 NVL", 835.5), ("NVIDIA GH200 480GB", None),
                                         ("TPU v4 lite", None), ("cpu", None)])
def test_published_peaks(kind, tflops):
  peak = peak_flops.published_peak(kind)
  assert (peak if peak is None else peak / 1e12) == tflops


def test_cpu_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
  calls = []

  def fake_measure(device):
    calls.append(device)
    return 123e9, 1024

  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  monkeypatch.setattr(peak_flops, "measure_matmul", fake_measure)
  first, second = peak_flops.device_peak(), peak_flops.device_peak()
  assert len(calls) == 1 and first.flops_per_sec == second.flops_per_sec == 123e9 / jax.local_device_count()
  with open(tmp_path / "visregion_jax" / "peak_flops.json", encoding="utf-8") as f:
    (key, entry), = json.load(f).items()
  assert peak_flops.cpu_model() in key and entry["flops_per_sec"] == 123e9 and "cached in" in second.source


def test_a_tiny_run_logs_throughput_and_mfu(tmp_path, monkeypatch, capsys):
  """The real measured peak (into a fresh cache), a 2-step run: the four keys in every
  training record of metrics.jsonl and TensorBoard, and on the console line."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  inputs = train_fixtures.build_inputs(str(tmp_path / "inputs"))
  workdir = str(tmp_path / "run")
  loop.run(load_config(train_fixtures.overrides(inputs, workdir, **{"train.steps": 2}), "test"))
  assert os.path.isfile(tmp_path / "cache" / "visregion_jax" / "peak_flops.json")
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [r for r in map(json.loads, f) if "loss" in r]
  assert [r["step"] for r in records] == [1, 2]
  board = scalars(workdir)
  for r in records:
    assert r["tokens_per_sec"] > 0 and 0 <= r["padding_fraction"] < 1
    assert r["model_tflops_per_sec_per_device"] > 0 and 0 < r["mfu"] < 1
    for key in ("tokens_per_sec", "padding_fraction", "model_tflops_per_sec_per_device", "mfu"):
      assert board[key][r["step"]] == pytest.approx(r[key], rel=1e-6), key
  out = capsys.readouterr().out
  assert out.count("MFU against ") == 1
  assert "tok/s pad " in out and " TFLOP/s/dev MFU " in out
