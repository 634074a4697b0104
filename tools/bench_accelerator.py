"""Benchmark: a ~1B LVLM's training step on whatever accelerator JAX finds, with the XLA
attention against the platform's fused kernel.

The model is Llama-3.2-1B's decoder shape (16 layers of 2048, 32 query / 8 KV heads of
64, MLP 8192, vocabulary 128256, tied embeddings, llama3 RoPE) joined by an mlp2x_gelu
projector to CLIP ViT-L/14-336 (24 layers of 1024, 577 tokens), with random weights and
bf16 compute. Rows are packed: 2048 tokens holding samples of random lengths (segment
ids), the first with an image's 576 features, some padding at the end. Three steps:

  full    all 16 decoder layers fully updated, and the projector
  region  the paper's uniform 25% region (layers 1, 5, 9, 13 here) fully updated, and the projector
  lora    LoRA r=128 / alpha 256 on every linear of the region, and the projector

each with model.attention "xla" (dense T x T scores) and "auto" (the fused kernel:
splash on TPU; on GPU Pallas flash attention for the packed decoder, cuDNN for the
tower), built as the training loop builds them (train/step.py, donation, the mesh
over all devices in context). Per step: median wall time of --steps timed steps,
tokens/s (real tokens), MFU and XLA's compiled peak memory per device; then the
device's own peak (memory_stats) once at the end.

MFU = model FLOPs / (step time x devices x peak bf16 FLOP/s of one device). Model
FLOPs count matmuls as the step needs them: per token, 2n forward for a weight of n
entries, 2n for the input gradient (every decoder layer: the projector below them is
trained) and 2n for the weight gradient of trained weights only (LoRA factors 6n);
the tied LM head 4 V E; causal attention 2 T H d per token and layer forward (half of
the T x T product), x3 with the backward; the frozen tower forward only (its
bidirectional attention in full); the projector 6n per image feature. The peak table
holds dense bf16 figures of the usual chips; --peak-tflops overrides it.

Goals (issue 17): full fine-tune MFU >= 50% with the fused kernel; region step
<= 0.80 x the full step. --tiny runs a toy model for seconds on CPU (the fused kernel
in Pallas interpret mode) to check the script itself.

  python tools/bench_accelerator.py [--tiny] [--rows-per-device N] [--steps N] [--remat]
"""

import argparse
import statistics
import sys
import time

import numpy as np

PEAK_BF16_TFLOPS = (  # substring of jax's device_kind -> dense bf16 TFLOP/s of one device
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
    ("TPU v6", 918.0), ("TPU v5 lite", 197.0), ("TPU v5e", 197.0), ("TPU v5", 459.0), ("TPU v4", 275.0))
LLAMA_32_1B = {  # meta-llama/Llama-3.2-1B config.json
    "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
    "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192},
    "tie_word_embeddings": True, "bos_token_id": 128000, "eos_token_id": 128001}
TINY_TEXT = {"model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
             "tie_word_embeddings": True}
TINY_VISION = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
               "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
KINDS = ("full", "region", "lora")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description="Training-step time, tokens/s, MFU and memory of a ~1B LVLM (Llama-3.2-1B + CLIP-L/336, "
                  "bf16, packed 2048-token rows) on this accelerator: full / region / LoRA steps, XLA attention "
                  "vs the fused kernel.")
  parser.add_argument("--tiny", action="store_true", help="a toy model on CPU for seconds (checks the script)")
  parser.add_argument("--rows-per-device", type=int, default=4, help="packed rows per device per step")
  parser.add_argument("--length", type=int, default=0, help="tokens per row (default 2048; --tiny 256)")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (after one warm-up step)")
  parser.add_argument("--remat", action="store_true", help="recompute each decoder layer in the backward pass")
  parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
  parser.add_argument("--attention", default="xla,auto", help="comma-separated model.attention values")
  parser.add_argument("--peak-tflops", type=float, default=0.0,
                      help="dense bf16 TFLOP/s of one device, for a chip the built-in table lacks")
  return parser.parse_args(argv)


def model_config(tiny: bool, remat: bool):
  from visregion_jax import model_spec  # pylint: disable=import-outside-toplevel
  from visregion_jax.convert.hf_config import decoder_config_from_hf  # pylint: disable=import-outside-toplevel
  from visregion_jax.convert.vision_config import vision_config_from_hf  # pylint: disable=import-outside-toplevel
  from visregion_jax.models.lvlm import LVLMConfig  # pylint: disable=import-outside-toplevel
  dtype = "float32" if tiny else "bfloat16"
  text = decoder_config_from_hf(TINY_TEXT if tiny else LLAMA_32_1B, "bench", dtype=dtype, param_dtype=dtype)
  text = text.replace(vocab_size=text.vocab_size + 1, remat=remat)  # the <image> row, as the builder adds it
  vision = vision_config_from_hf(TINY_VISION if tiny else model_spec.CLIP_VIT_L_14_336, "bench", dtype=dtype,
                                 param_dtype=dtype)
  return LVLMConfig(text=text, vision=vision, image_token_id=text.vocab_size - 1)


def packed_rows(config, rows: int, length: int, seed: int = 0) -> dict:
  """Rows of samples of T/10..T/3 tokens (the first, longer, with the row's image), padding
  after the last whole sample; image tokens unsupervised, as the data pipeline packs them."""
  from visregion_jax.data.tokenize import IGNORE_INDEX  # pylint: disable=import-outside-toplevel
  rng = np.random.RandomState(seed)
  n_img, vocab = config.num_image_tokens, config.text.vocab_size - 1
  ids = rng.randint(3, vocab, size=(rows, length)).astype(np.int32)
  seg = np.zeros((rows, length), np.int32)
  for r in range(rows):
    start, s = 0, 0
    while True:
      n = max(n_img + 16, length // 8) if s == 0 else int(rng.randint(length // 10, length // 3))
      if start + n > length:
        break
      s += 1
      seg[r, start:start + n] = s
      start += n
    ids[r, 4:4 + n_img] = config.image_token_id
  labels = np.where((seg > 0) & (ids != config.image_token_id), ids, IGNORE_INDEX).astype(np.int32)
  size = config.vision.image_size
  return {"input_ids": ids, "labels": labels, "attention_mask": (seg > 0).astype(np.int32), "segment_ids": seg,
          "pixel_values": rng.normal(size=(rows, size, size, 3)).astype(np.float32),
          "image_mask": np.ones((rows,), bool)}


def plan_of(kind: str, num_layers: int):
  from visregion_jax.plan import TrainingPlan  # pylint: disable=import-outside-toplevel
  from visregion_jax.region import select_layers  # pylint: disable=import-outside-toplevel
  if kind == "full":
    return TrainingPlan(region_layers=tuple(range(num_layers)))
  layers = tuple(select_layers(num_layers, 0.25, "uniform"))
  if kind == "region":
    return TrainingPlan(region_layers=layers)
  return TrainingPlan(region_layers=layers, lora_rank=128, lora_alpha=256.0, lora_dropout=0.05)


def matmul_counts(params, frozen) -> dict:
  """Matmul weight entries by role, for model_flops."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  counts = {"layers": 0, "layers_trained": 0, "lora": 0, "projector": 0, "vision": 0}
  for state, trained in ((params, True), (frozen, False)):
    for path, v in nnx.to_flat_state(state):
      path, size = tuple(str(p) for p in path), int(v.get_value().size)
      if path[-1] in ("lora_a", "lora_b"):
        counts["lora"] += size
      elif path[-1] != "kernel":
        continue
      elif path[0] == "projector":
        counts["projector"] += size
      elif path[0] == "vision_tower":
        counts["vision"] += size
      elif "layers" in path:
        counts["layers"] += size
        counts["layers_trained"] += size if trained else 0
  return counts


def model_flops(config, counts: dict, rows: int, length: int) -> float:
  """One step's model FLOPs (module docstring)."""
  t, v = config.text, config.vision
  attention = 3 * 2 * length * t.num_heads * t.head_dim * t.num_layers
  per_token = (4 * counts["layers"] + 2 * counts["layers_trained"] + 6 * counts["lora"]
               + 4 * t.vocab_size * t.hidden_size + attention)
  patches = v.num_positions
  vision = rows * patches * (2 * counts["vision"] + 4 * patches * v.hidden_size * v.num_layers)
  return per_token * rows * length + 6 * counts["projector"] * rows * config.num_image_tokens + vision


class Variant:
  """One (kind, attention) step: the model split, placed and jitted as the training loop does."""

  def __init__(self, base, config, kind: str, attention: str, interpret: bool, mesh):
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from flax import nnx  # pylint: disable=import-outside-toplevel
    from jax.sharding import NamedSharding  # pylint: disable=import-outside-toplevel

    from visregion_jax import base_config, optim, sharding  # pylint: disable=import-outside-toplevel
    from visregion_jax.models.attention_choice import set_attention  # pylint: disable=import-outside-toplevel
    from visregion_jax.train.step import make_train_step  # pylint: disable=import-outside-toplevel
    self.name, self.mesh = f"{kind} / {attention}", mesh
    model = nnx.clone(base)
    plan = plan_of(kind, config.text.num_layers)
    plan.prepare(model, seed=0)
    set_attention(model, attention, interpret)
    graphdef, params, frozen, rest = plan.split(model)
    params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)  # donated: never the base's buffers
    self.params = jax.device_put(params, sharding.state_shardings(params, mesh))
    self.frozen = jax.device_put(frozen, sharding.state_shardings(frozen, mesh))
    self.rest = jax.device_put(rest, sharding.replicated(mesh))
    self.tx, _ = optim.make_optimizer(base_config().train, plan.labels(self.params))
    # As the loop: moments beside their parameters, the step counters replicated on the mesh.
    self.opt_state = jax.tree.map(lambda x: x if isinstance(getattr(x, "sharding", None), NamedSharding)
                                  else jax.device_put(x, sharding.replicated(mesh)), self.tx.init(self.params))
    self.counts = matmul_counts(self.params, self.frozen)
    self.step_fn = jax.jit(make_train_step(graphdef, self.tx, 1, 0), donate_argnums=(0, 3))
    self.index = 0

  def compile(self, batch):
    import jax  # pylint: disable=import-outside-toplevel
    with jax.set_mesh(self.mesh):
      t0 = time.perf_counter()
      self.compiled = self.step_fn.lower(self.params, self.frozen, self.rest, self.opt_state, batch,
                                         self.index).compile()
      self.compile_s = time.perf_counter() - t0
    stats = self.compiled.memory_analysis()
    self.peak = None if stats is None else (stats.argument_size_in_bytes + stats.output_size_in_bytes
                                            - stats.alias_size_in_bytes + stats.temp_size_in_bytes)

  def step(self, batch) -> float:
    """One step; seconds until every output is written."""
    import jax  # pylint: disable=import-outside-toplevel
    t0 = time.perf_counter()
    self.params, self.rest, self.opt_state, metrics = self.compiled(
        self.params, self.frozen, self.rest, self.opt_state, batch, self.index)
    jax.block_until_ready((self.params, self.opt_state, metrics))
    self.index += 1
    self.loss = float(metrics["loss"])
    return time.perf_counter() - t0

  def release(self) -> None:
    del self.params, self.frozen, self.rest, self.opt_state, self.compiled


def peak_flops(device, override: float):
  if override:
    return override * 1e12
  kind = getattr(device, "device_kind", "")
  return next((tflops * 1e12 for name, tflops in PEAK_BF16_TFLOPS if name in kind), None)


def run_variant(base, config, kind, attention, args, mesh, batch, rows, length) -> dict:
  """Builds, compiles and times one variant; an out-of-memory compile or step is a row saying so."""
  import jax  # pylint: disable=import-outside-toplevel
  interpret = args.tiny and attention != "xla"
  name = "splash" if interpret else attention  # --tiny: the TPU kernel, interpreted on CPU
  variant = None
  try:
    variant = Variant(base, config, kind, name, interpret, mesh)
    variant.compile(batch)
    with jax.set_mesh(mesh):
      variant.step(batch)  # warm-up
      times = [variant.step(batch) for _ in range(args.steps)]
    seconds = statistics.median(times)
    return {"kind": kind, "attention": name, "step_s": seconds, "compile_s": variant.compile_s,
            "flops": model_flops(config, variant.counts, rows, length), "peak": variant.peak, "loss": variant.loss}
  except Exception as e:  # pylint: disable=broad-except  # report the row (often RESOURCE_EXHAUSTED), go on
    if args.tiny:
      raise  # the script check: a failure is a bug here
    return {"kind": kind, "attention": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"}
  finally:
    if variant is not None and hasattr(variant, "compiled"):
      variant.release()


def print_table(results: list, real_tokens: int, devices: int, peak) -> None:
  print(f"{'step':20s}{'step s':>9s}{'tokens/s':>12s}{'MFU':>8s}{'compiled peak/dev':>19s}{'compile s':>11s}"
        f"{'loss':>8s}")
  for r in results:
    label = f"{r['kind']} / {r['attention']}"
    if "error" in r:
      print(f"{label:20s}  {r['error']}")
      continue
    mfu = f"{r['flops'] / (r['step_s'] * devices * peak):8.1%}" if peak else f"{'n/a':>8s}"
    mem = f"{r['peak'] / 2**30:15.2f} GiB" if r["peak"] is not None else f"{'n/a':>19s}"
    print(f"{label:20s}{r['step_s']:9.3f}{real_tokens / r['step_s']:12,.0f}{mfu}{mem}{r['compile_s']:11.1f}"
          f"{r['loss']:8.3f}")


def print_goals(results: list, peak, devices: int) -> None:
  ok = {(r["kind"], r["attention"]): r for r in results if "error" not in r}
  for attention in sorted({a for _, a in ok}):
    full, region = ok.get(("full", attention)), ok.get(("region", attention))
    if full and peak:
      mfu = full["flops"] / (full["step_s"] * devices * peak)
      print(f"goal full-FT MFU >= 50% ({attention}): {mfu:.1%} -> {'met' if mfu >= 0.5 else 'NOT met'}")
    if full and region:
      ratio = region["step_s"] / full["step_s"]
      print(f"goal region step <= 0.80 x full ({attention}): {ratio:.2f} -> {'met' if ratio <= 0.8 else 'NOT met'}")


def main(argv=None) -> int:
  args = parse_args(argv)
  kinds = [k for k in args.kinds.split(",") if k]
  if any(k not in KINDS for k in kinds):
    raise SystemExit(f"--kinds {args.kinds}: expected some of {','.join(KINDS)}")
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from visregion_jax import sharding  # pylint: disable=import-outside-toplevel
  from visregion_jax.models.lvlm import LVLM  # pylint: disable=import-outside-toplevel
  device, devices = jax.devices()[0], jax.device_count()
  if not args.tiny and device.platform == "cpu":
    raise SystemExit("no accelerator found (jax.devices() is CPU); run with --tiny to check the script on CPU")
  length = args.length or (256 if args.tiny else 2048)
  rows = args.rows_per_device * devices
  mesh = sharding.make_mesh(1, -1, 1)
  peak = None if args.tiny else peak_flops(device, args.peak_tflops)
  config = model_config(args.tiny, args.remat)
  print(f"device: {devices} x {getattr(device, 'device_kind', device.platform)} ({jax.default_backend()}), "
        f"jax {jax.__version__}; peak bf16 {'unknown (--peak-tflops)' if not peak else f'{peak / 1e12:.0f} TFLOP/s'}"
        f" per device; mesh fsdp={devices}")
  t0 = time.perf_counter()
  base = LVLM(config, rngs=nnx.Rngs(0))
  np_batch = packed_rows(config, rows, length)
  batch = sharding.global_batch(np_batch, mesh)
  real = int(np_batch["attention_mask"].sum())
  params = sum(x.size for x in jax.tree.leaves(nnx.state(base, nnx.Param)))
  print(f"model: {params / 1e9:.2f} B parameters (random), built in {time.perf_counter() - t0:.1f} s; "
        f"{rows} packed rows x {length} tokens ({real / (rows * length):.1%} real), "
        f"{'remat' if args.remat else 'no remat'}, {config.text.dtype}")
  results = []
  for kind in kinds:
    for attention in [a for a in args.attention.split(",") if a]:
      results.append(run_variant(base, config, kind, attention, args, mesh, batch, rows, length))
      r = results[-1]
      print(f"  {kind} / {r['attention']}: " + (r["error"] if "error" in r else
                                                 f"compiled in {r['compile_s']:.1f} s, {r['step_s']:.3f} s/step"),
            flush=True)
  print_table(results, real, devices, peak)
  print_goals(results, peak, devices)
  stats = device.memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    print(f"device peak memory over the whole run: {stats['peak_bytes_in_use'] / 2**30:.2f} GiB "
          f"of {stats.get('bytes_limit', 0) / 2**30:.2f} GiB")
  return 0


if __name__ == "__main__":
  sys.exit(main())
