"""Benchmark: one visual-region training step of SmolLM2-135M + a small CLIP tower, on this CPU.

Measures, in one run, the jitted step of `train_step.make_train_step` exactly as
`train.run` builds it (the demo config, `model_builder.build_model`, `nnx.split` by
the region labeler, `optim.make_optimizer`, donation), with image inputs (an LVLM
of SmolLM2-135M-Instruct and a random demo-sized CLIP tower written with
transformers: 48 px images, 8 px patches -> 36 image tokens), on a fixed batch of
8 x 128 real tokens in float32, for four trainable sets:

  full        strategy "full", lora_rank 0: all 30 decoder layers + projector
  region      strategy "uniform" 25% (8 layers), lora_rank 0: the demo's recipe
  region-lora strategy "uniform" 25%, LoRA r=128 alpha 256 (dropout 0.05, base's)
  projector   strategy "none": the projector alone

and, beside them, the same full fine-tune and region (requires_grad on the 8 region
layers only) in PyTorch (transformers' LlamaForCausalLM from the same GGUF, eager,
`inputs_embeds` of the same length, AdamW + clipping).
PyTorch runs once per `--torch-threads` count (default 1 and all cores): its OpenMP
threads stall whenever another process holds a core, so on a shared machine one
thread can be several times faster than two; the ratio is taken against the faster.
For each: wall and CPU seconds per step and tokens/s (best of N; the variants,
PyTorch and the matmul reference alternate round by round so a burst of load from
another process hits all of them), optimizer state bytes, peak memory (XLA's buffer
assignment of the compiled step, since `device.memory_stats()` is None on CPU; and
the process's RSS high-water growth during a step, reset through
/proc/self/clear_refs), and achieved FLOP/s against a dense fp32 `jnp.dot` of the
same run (the machine's practical peak), compared per CPU-second so that cores
taken by other processes cancel out.

Why ratios: the absolute speed of a shared 2-core VM means little, so the goals are
ratios of runs in this process: region/full step time (goal <= 0.55), region/full
optimizer state (goal <= 0.30), JAX/PyTorch full-fine-tune tokens/s (goal >= 1.0).
The FLOP column says how far the step-time goal is reachable at all: the projector
sits below every decoder layer, so the backward pass must carry activation
gradients through all 30 layers whatever the region is; only the weight gradients
(1/3 of a layer's matmul work) and the optimizer shrink with the region.

A script, not a test: it asserts nothing. `bench_data.py` imports its helpers.

  .venv/bin/python tools/bench_train_step.py [--help]
"""

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time

from bench_load import OtherLoad, cpu_model

os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF and shard progress bars

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "demo.py")
MODEL = "smollm2-135m-instruct"
# The demo's tower (configs/demo.py pretrain_vision_tower; vision_pretrain uses 4x MLP).
TOWER = dict(image_size=48, patch_size=8, hidden_size=128, num_layers=4, num_heads=4)
GOALS = {"step": 0.55, "opt": 0.30, "torch": 1.0}
_BUSY_WARN = 0.25  # cores used by other processes above which timings are suspect


# --- machine and process measurements ---------------------------------------------------

def status_kib() -> dict:
  """VmRSS / VmHWM of this process in KiB."""
  out = {}
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      key, _, rest = line.partition(":")
      if key in ("VmRSS", "VmHWM"):
        out[key] = int(rest.split()[0])
  return out


def reset_peak_rss() -> bool:
  """Returns freed heap to the OS, then resets VmHWM to the current RSS (Linux >= 4.0).

  Without the trim, a step's temporaries land in pages an earlier step (of another
  variant) freed but glibc kept, and its peak would not show. False where not permitted.
  """
  try:
    import ctypes  # pylint: disable=import-outside-toplevel
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass
  try:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
      f.write("5")
    return True
  except OSError:
    return False


class Timed:
  """Wall and process CPU seconds, and RSS high-water growth, per step of one measured thing.

  CPU seconds (all threads of this process) hardly change when other processes take
  cores away, so they are the steadier measure on a shared machine; wall time is
  what a user waits. Spinning OpenMP threads count as CPU time too.
  """

  def __init__(self, name: str):
    self.name, self.times, self.cpu_times, self.rss_peaks = name, [], [], []

  def run(self, fn):
    can_reset = reset_peak_rss()
    before = status_kib()["VmRSS"]
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    self.times.append(time.perf_counter() - t0)
    self.cpu_times.append(time.process_time() - c0)
    if can_reset:
      self.rss_peaks.append((status_kib()["VmHWM"] - before) * 1024)
    return out

  @property
  def best(self) -> float:
    return min(self.times)  # other load only ever adds time

  @property
  def median(self) -> float:
    return statistics.median(self.times)

  @property
  def cpu_best(self) -> float:
    return min(self.cpu_times)

  @property
  def rss_peak(self):
    return max(self.rss_peaks) if self.rss_peaks else None


class DenseMatmul:
  """A jitted fp32 [n, n] @ [n, n]: this machine's practical peak, timed beside the steps."""

  def __init__(self, n: int):
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    self.flops = 2 * n ** 3
    self.a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    self.b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    self.dot = jax.jit(jnp.dot)
    self.dot(self.a, self.b).block_until_ready()
    self.timer = Timed("matmul")

  def run(self, repeats: int) -> None:
    for _ in range(repeats):
      self.timer.run(lambda: self.dot(self.a, self.b).block_until_ready())

  @property
  def peak(self) -> float:
    """Best FLOP/s of wall time."""
    return self.flops / self.timer.best

  @property
  def peak_per_cpu_s(self) -> float:
    """Best FLOP per CPU second: what one core's worth of time yields."""
    return self.flops / self.timer.cpu_best


def tree_bytes(tree) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(tree))


def tree_size(tree) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return sum(int(getattr(x, "size", 0)) for x in jax.tree.leaves(tree))


# --- inputs -----------------------------------------------------------------------------

def write_random_tower(out_dir: str, seed: int = 0, **sizes) -> str:
  """A random CLIPVisionModel of the demo tower's shape, as an HF directory (+ preprocessor)."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from visregion_jax.data import image_processing  # pylint: disable=import-outside-toplevel
  s = {**TOWER, **sizes}
  torch.manual_seed(seed)
  tower = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
      hidden_size=s["hidden_size"], intermediate_size=4 * s["hidden_size"],
      num_hidden_layers=s["num_layers"], num_attention_heads=s["num_heads"],
      image_size=s["image_size"], patch_size=s["patch_size"], layer_norm_eps=1e-5,
      hidden_act="quick_gelu"))
  tower.save_pretrained(out_dir)
  processor = image_processing.ImageProcessorConfig(
      kind="clip", size=s["image_size"], crop_size=s["image_size"],
      image_mean=image_processing.CLIP_MEAN, image_std=image_processing.CLIP_STD)
  with open(os.path.join(out_dir, "preprocessor_config.json"), "w", encoding="utf-8") as f:
    json.dump(processor.to_hf_dict(), f, indent=2)
  return out_dir


def demo_config(workdir: str, tower_dir: str, **region):
  """configs/demo.py with `workdir`, a ready tower (no pretraining), fp32, and `region` keys."""
  from visregion_jax.config_loading import expand_workdir, load_config_file  # pylint: disable=import-outside-toplevel
  config = load_config_file(DEMO_CONFIG)
  with config.unlocked():
    config.workdir = workdir
    config.model.vision_tower = tower_dir
    config.model.pretrain_vision_tower = None
    config.model.dtype = "float32"
    config.data.synthetic_root = ""
    for key, value in region.items():
      config.region[key] = value
  return expand_workdir(config, workdir)


@contextlib.contextmanager
def decoder_loaded_once():
  """Makes `model_builder.build_model` load each decoder once in this block.

  Every variant starts from the same SmolLM2 weights; loading (dequantizing the
  GGUF) once saves ~10 s and ~0.5 GB per variant. Safe because build_model never
  mutates the decoder (compose_lvlm copies it into a new LVLM); the trainable
  arrays are copied before their buffers are donated (see `Variant`).
  """
  from visregion_jax import model_builder  # pylint: disable=import-outside-toplevel
  original, cache = model_builder.from_hf, {}

  def cached(path, **kwargs):
    key = (path, tuple(sorted(kwargs.items())))
    if key not in cache:
      cache[key] = original(path, **kwargs)
    return cache[key]

  model_builder.from_hf = cached
  try:
    yield
  finally:
    model_builder.from_hf = original


# --- the JAX step -----------------------------------------------------------------------

class Variant:
  """One trainable set: the model split and jitted as `train.run` does, compiled ahead."""

  def __init__(self, name: str, config, workdir: str):
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from flax import nnx  # pylint: disable=import-outside-toplevel
    from jax.sharding import NamedSharding  # pylint: disable=import-outside-toplevel
    from visregion_jax import model_builder, optim, region, sharding  # pylint: disable=import-outside-toplevel
    from visregion_jax.train_step import make_train_step  # pylint: disable=import-outside-toplevel
    self.name, self.config = name, config
    t = config.train
    self.mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    model, layers = model_builder.build_model(config, workdir)
    self.model_config, self.layers = model.config, tuple(layers)
    lora, train_vision = config.region.lora_rank > 0, config.region.train_vision

    def trainable(path, variable):
      return (isinstance(variable, nnx.Param)
              and region.label_of(tuple(path), layers, lora=lora,
                                  train_vision=train_vision) != region.FROZEN)

    graphdef, params, frozen, rest = nnx.split(model, trainable, nnx.Param, ...)
    self.graphdef = graphdef
    del model
    # Fresh buffers: donation must not delete arrays shared with the cached decoder.
    params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
    self.params = jax.device_put(params, sharding.state_shardings(params, self.mesh))
    self.frozen = jax.device_put(frozen, sharding.state_shardings(frozen, self.mesh))
    self.rest = jax.device_put(rest, sharding.replicated(self.mesh))
    self.labels = region.param_labels(self.params, layers, lora=lora, train_vision=train_vision)
    self.tx, _ = optim.make_optimizer(t, self.labels)
    # As train.run: eager init, moments keep their parameter's sharding, counters replicated.
    self.opt_state = jax.tree.map(
        lambda x: x if isinstance(getattr(x, "sharding", None), NamedSharding)
        else jax.device_put(x, sharding.replicated(self.mesh)), self.tx.init(self.params))
    self.step_fn = jax.jit(make_train_step(graphdef, self.tx, t.grad_accum, config.seed),
                           donate_argnums=(0, 3))
    self.compiled = {}   # batch shapes -> compiled step
    self.step_index = 0
    self.trainable_params = tree_size(self.params)
    self.total_params = self.trainable_params + tree_size(self.frozen)
    self.opt_bytes = tree_bytes(self.opt_state)
    self.param_counts = self._param_counts()

  def _param_counts(self) -> dict:
    """Matmul weight counts for the FLOP estimate (`model_flops`)."""
    from flax import nnx  # pylint: disable=import-outside-toplevel
    counts = {"layer_dense": 0, "layer_dense_trainable": 0, "lora": 0, "projector": 0, "vision": 0}
    for state, is_trainable in ((self.params, True), (self.frozen, False)):
      for path, v in nnx.to_flat_state(state):
        path, size = tuple(str(p) for p in path), int(v.get_value().size)
        if path[-1] in ("lora_a", "lora_b"):
          counts["lora"] += size
        elif path[0] == "projector" and path[-1] == "kernel":
          counts["projector"] += size
        elif path[0] == "vision_tower" and path[-1] == "kernel":
          counts["vision"] += size
        elif "layers" in path and path[-1] == "kernel":
          counts["layer_dense"] += size
          counts["layer_dense_trainable"] += size if is_trainable else 0
    return counts

  def device_batch(self, batch: dict) -> dict:
    from visregion_jax import sharding  # pylint: disable=import-outside-toplevel
    return sharding.global_batch({k: v for k, v in batch.items() if k != "index"}, self.mesh)

  def compile(self, batch: dict):
    """(compiled step, seconds) for this batch's shapes; XLA's memory analysis is read once."""
    key = tuple((k, v.shape) for k, v in sorted(batch.items()))
    if key not in self.compiled:
      t0 = time.perf_counter()
      lowered = self.step_fn.lower(self.params, self.frozen, self.rest, self.opt_state, batch,
                                   self.step_index)
      compiled = lowered.compile()
      self.compiled[key] = (compiled, time.perf_counter() - t0)
      if not hasattr(self, "memory"):
        self.memory = memory_of(compiled)
    return self.compiled[key]

  def step(self, batch: dict) -> dict:
    """One training step on a device batch; blocks until every output is written.

    The metrics alone are ready before the optimizer's last fusions finish; waiting on
    them only would bill that tail to whatever runs next.
    """
    import jax  # pylint: disable=import-outside-toplevel
    compiled, _ = self.compile(batch)
    self.params, self.rest, self.opt_state, metrics = compiled(
        self.params, self.frozen, self.rest, self.opt_state, batch, self.step_index)
    self.step_index += 1
    jax.block_until_ready((self.params, self.rest, self.opt_state))
    return jax.block_until_ready(metrics)


def memory_of(compiled) -> dict:
  """XLA's buffer assignment of a compiled executable (bytes), or {} where not reported."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # backends differ in what they implement
    return {}
  if m is None:
    return {}
  out = {k: int(getattr(m, f"{k}_size_in_bytes", 0)) for k in ("argument", "output", "alias", "temp")}
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


def synthetic_batch(model_config, batch: int, length: int, seed: int = 0) -> dict:
  """A numpy batch of `batch` x `length` real tokens, one image each (as the pipeline collates)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.RandomState(seed)
  n_img = model_config.num_image_tokens
  vocab = model_config.text.vocab_size - 1  # the last row is the image token
  ids = rng.randint(3, vocab, size=(batch, length)).astype(np.int32)
  start = 4
  ids[:, start:start + n_img] = model_config.image_token_id
  labels = ids.copy()
  labels[:, :start + n_img + 8] = -100  # prompt and image tokens unsupervised, as templates do
  size = model_config.vision.image_size
  return {"input_ids": ids, "labels": labels, "attention_mask": np.ones_like(ids),
          "pixel_values": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
          "image_mask": np.ones((batch,), bool)}


def model_flops(variant: Variant, batch: int, length: int) -> tuple:
  """(FLOPs of one step, formula) for the step's matmuls, counted as XLA runs them.

  Per token, for a matmul weight of n entries: forward 2n; backward 2n for the input
  gradient, needed in every decoder layer because the projector (trainable in every
  variant here) sits below them all; 2n more for the weight gradient of trainable
  weights only. LoRA factors are trainable matmuls (6n); the tied LM head is frozen
  (4 V E); attention's scores and context are 4 T E_q per token and layer forward,
  x3 with backward (the full T x T, as XLA computes it without exploiting causality);
  the frozen tower runs forward only (2n per patch token, class token included).
  """
  c, m = variant.param_counts, variant.model_config
  text = m.text
  tokens = batch * length
  head = text.vocab_size * text.hidden_size
  attn = 12 * length * text.num_heads * text.head_dim * text.num_layers
  per_token = (4 * c["layer_dense"] + 2 * c["layer_dense_trainable"] + 6 * c["lora"]
               + 4 * head + attn)
  image_tokens = batch * m.num_image_tokens
  vision_tokens = batch * m.vision.num_positions
  total = per_token * tokens + 6 * c["projector"] * image_tokens + 2 * c["vision"] * vision_tokens
  formula = ("T*(4*N_layers + 2*N_layers_trainable + 6*N_lora + 4*V*E + 12*S*E*L) "
             "+ 6*N_proj*T_img + 2*N_vision*T_patch")
  return total, formula


# --- PyTorch reference ------------------------------------------------------------------

class TorchFineTune:
  """transformers' LlamaForCausalLM from the same GGUF with `requires_grad` on the given
  decoder layers only (all of them: the full fine-tune; embeddings, tied head and final
  norm frozen, as the JAX labeler does), AdamW with the same hyperparameters and
  global-norm clipping, fed `inputs_embeds`. The region row is the issue's PyTorch
  reference setting (8 of 30 layers with requires_grad) measured on this machine."""

  def __init__(self, train_config, foreach: bool, layers=None):
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    from visregion_jax.convert.gguf_file import resolve_model_path  # pylint: disable=import-outside-toplevel
    transformers.utils.logging.disable_progress_bar()
    path = resolve_model_path(MODEL)
    t0 = time.perf_counter()
    self.hf = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32)
    self.load_s = time.perf_counter() - t0
    self.hf.train()
    for p in self.hf.parameters():
      p.requires_grad_(False)
    layers = range(len(self.hf.model.layers)) if layers is None else layers
    self.trainable = [p for i in layers for p in self.hf.model.layers[i].parameters()]
    for p in self.trainable:
      p.requires_grad_(True)
    self.max_norm = train_config.max_grad_norm
    self.opt = torch.optim.AdamW(self.trainable, lr=train_config.lr, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=train_config.weight_decay, foreach=foreach)
    self.attn = self.hf.config._attn_implementation  # pylint: disable=protected-access

  def set_batch(self, batch: dict, seed: int = 0) -> None:
    """The JAX batch's ids (image tokens replaced by random features) as inputs_embeds."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
    ids = torch.from_numpy(np.minimum(batch["input_ids"], self.hf.config.vocab_size - 1).astype(np.int64))
    with torch.no_grad():
      embeds = self.hf.get_input_embeddings()(ids)
    image = torch.from_numpy(batch["input_ids"] >= self.hf.config.vocab_size)
    noise = torch.from_numpy(np.random.RandomState(seed).normal(size=embeds.shape).astype(np.float32))
    self.embeds = torch.where(image[..., None], noise * 0.02, embeds).contiguous()
    self.mask = torch.from_numpy(batch["attention_mask"].astype(np.int64))
    self.labels = torch.from_numpy(batch["labels"].astype(np.int64))

  def step(self, threads: int) -> float:
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(threads)
    self.opt.zero_grad(set_to_none=True)
    loss = self.hf(inputs_embeds=self.embeds, attention_mask=self.mask, labels=self.labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.trainable, self.max_norm)
    self.opt.step()
    return float(loss.detach())

  @property
  def opt_bytes(self) -> int:
    return sum(int(v.numel() * v.element_size()) for s in self.opt.state.values()
               for v in s.values() if hasattr(v, "numel"))


# --- the run ----------------------------------------------------------------------------

VARIANTS = {
    "full": dict(strategy="full", lora_rank=0),
    "region": dict(strategy="uniform", fraction=0.25, lora_rank=0),
    "region-lora": dict(strategy="uniform", fraction=0.25),   # rank / alpha from --lora-*
    "projector": dict(strategy="none", lora_rank=0),
}


def build_variants(names, root: str, tower_dir: str, args) -> dict:
  out = {}
  with decoder_loaded_once():
    for name in names:
      region = dict(VARIANTS[name])
      if name == "region-lora":
        region.update(lora_rank=args.lora_rank, lora_alpha=args.lora_alpha)
      t0 = time.perf_counter()
      out[name] = Variant(name, demo_config(os.path.join(root, name), tower_dir, **region),
                          os.path.join(root, name))
      out[name].build_s = time.perf_counter() - t0
  return out


def header(extra: str = "") -> None:
  import jax  # pylint: disable=import-outside-toplevel
  print(f"machine: {os.cpu_count()} CPUs, {cpu_model()} ({platform.machine()}); "
        f"jax {jax.__version__} ({jax.default_backend()}); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
        f"{extra}")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description="Visual-region train-step speed and memory on SmolLM2-135M + a small CLIP tower "
                  "(fp32, this CPU): full FT vs region vs region LoRA vs projector only, and "
                  "JAX vs PyTorch full FT, as ratios measured in one run.")
  parser.add_argument("--batch", type=int, default=8, help="samples per step")
  parser.add_argument("--length", type=int, default=128, help="tokens per sample (36 are image tokens)")
  parser.add_argument("--repeats", type=int, default=3, help="timed rounds (each runs every variant once)")
  parser.add_argument("--lora-rank", type=int, default=128)
  parser.add_argument("--lora-alpha", type=float, default=256.0)
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help=f"comma-separated subset of {','.join(VARIANTS)}")
  parser.add_argument("--skip-torch", action="store_true", help="skip the PyTorch reference")
  parser.add_argument("--torch-threads", default=f"1,{os.cpu_count()}",
                      help="comma-separated torch intra-op thread counts, each timed as its own row "
                           "(OpenMP threads stall when another process takes a core, so one "
                           "thread can beat two on a busy machine); the ratio uses the fastest")
  parser.add_argument("--torch-foreach", type=int, default=1, choices=(0, 1),
                      help="torch AdamW multi-tensor (foreach) implementation")
  parser.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n fp32 peak reference")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  names = [n for n in args.variants.split(",") if n]
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    raise SystemExit(f"unknown variants {unknown}; expected some of {list(VARIANTS)}")
  if args.length < 36 + 16:
    raise SystemExit(f"--length {args.length}: expected at least 52 (36 image tokens + text)")
  torch_threads = [] if args.skip_torch else [int(t) for t in args.torch_threads.split(",") if t]
  header()
  with tempfile.TemporaryDirectory(prefix="bench_train_step_") as root:
    tower_dir = write_random_tower(os.path.join(root, "tower"))
    t0 = time.perf_counter()
    variants = build_variants(names, root, tower_dir, args)
    print(f"built {len(variants)} variants in {time.perf_counter() - t0:.1f} s "
          f"(SmolLM2 loaded once; tower {TOWER}); compiling and running each once (warm-up):")
    first = next(iter(variants.values()))
    np_batch = synthetic_batch(first.model_config, args.batch, args.length)
    tokens = args.batch * args.length

    for v in variants.values():
      v.batch = v.device_batch(np_batch)
      _, compile_s = v.compile(v.batch)
      t0 = time.perf_counter()
      loss = float(v.step(v.batch)["loss"])
      print(f"  {v.name:12s} layers {list(v.layers) if len(v.layers) < 30 else 'all 30'}; trainable "
            f"{v.trainable_params / 1e6:6.2f} M; build {v.build_s:5.1f} s, compile {compile_s:5.1f} s, "
            f"first step {time.perf_counter() - t0:5.1f} s, loss {loss:.3f}")
    torch_runs = {}
    if torch_threads:
      import torch  # pylint: disable=import-outside-toplevel
      from visregion_jax.region import select_layers  # pylint: disable=import-outside-toplevel
      region_layers = select_layers(first.model_config.text.num_layers, 0.25, "uniform")
      for kind, layers in (("full", None), ("region", region_layers)):
        run = torch_runs[kind] = TorchFineTune(first.config.train, bool(args.torch_foreach), layers)
        run.set_batch(np_batch)
        t0 = time.perf_counter()
        loss = run.step(max(torch_threads))
        print(f"  {'torch ' + kind:12s} torch {torch.__version__}, attention {run.attn}, AdamW "
              f"foreach={bool(args.torch_foreach)}; load {run.load_s:.1f} s, first step "
              f"{time.perf_counter() - t0:5.1f} s, loss {loss:.3f}")

    matmul = DenseMatmul(args.matmul_size)
    timers = {name: Timed(name) for name in variants}
    timers.update({f"torch {k} {n}t": Timed(f"torch {k} {n}t") for k in torch_runs for n in torch_threads})
    with OtherLoad() as load:
      for _ in range(args.repeats):
        matmul.run(3)
        for name, v in variants.items():
          timers[name].run(lambda v=v: v.step(v.batch))
        for kind, run in torch_runs.items():
          for n in torch_threads:
            timers[f"torch {kind} {n}t"].run(lambda n=n, run=run: run.step(n))
      matmul.run(3)

    print(f"\ndense fp32 jnp.dot {args.matmul_size}^2, timed {len(matmul.timer.times)} times between "
          f"the steps: best {matmul.peak / 1e9:.1f} GFLOP/s wall, {matmul.peak_per_cpu_s / 1e9:.1f} "
          f"GFLOP per CPU-second; other processes used {load.cores:.2f} of {os.cpu_count()} cores "
          "during the timed rounds")
    rows = []
    for name, v in variants.items():
      flops, formula = model_flops(v, args.batch, args.length)
      rows.append(dict(name=name, timer=timers[name], flops=flops, opt=v.opt_bytes,
                       xla_peak=v.memory.get("peak"), xla_temp=v.memory.get("temp"),
                       trainable=v.trainable_params))
    same_flops = {kind: next((r["flops"] for r in rows if r["name"] == kind), None) for kind in torch_runs}
    for kind, run in torch_runs.items():
      for n in torch_threads:
        rows.append(dict(name=f"torch {kind} {n}t", timer=timers[f"torch {kind} {n}t"], flops=same_flops[kind],
                         opt=run.opt_bytes, xla_peak=None, xla_temp=None,
                         trainable=sum(p.numel() for p in run.trainable)))
    print_table(rows, tokens, matmul, args)
    p = first.total_params
    print(f"FLOPs = {formula}; T = {tokens} tokens, S = {args.length}, E = "
          f"{first.model_config.text.hidden_size}, L = 30, V = vocabulary (the terms: forward 2n + "
          "input-gradient 2n for every matmul weight, since the trainable projector lies below all "
          "layers; weight-gradient 2n for trainable ones only). The 6*P*T rule (P = all "
          f"{p / 1e6:.1f} M params) gives {6 * p * tokens / 1e9:.0f} GFLOP.")
    if load.cores > _BUSY_WARN:
      print(f"WARNING: other processes used {load.cores:.2f} cores (> {_BUSY_WARN}) while timing; "
            "wall times are inflated (best-of-N discounts bursts only); the CPU-second columns "
            "are the steadier comparison, except for multi-threaded torch (spinning OpenMP "
            "threads burn CPU while they wait).")
  return 0


def print_table(rows: list, tokens: int, matmul: DenseMatmul, args) -> None:
  mib = lambda b: "-" if b is None else f"{b / 2 ** 20:.0f}"
  by = {r["name"]: r for r in rows}
  full = by.get("full")
  rel = lambda a, b: f"{a / b:.3f}" if a is not None and b else "-"
  line = "=" * 132
  print("\n" + line)
  print(f"train step, batch {args.batch} x {args.length} tokens, fp32; best of {args.repeats} rounds; "
        "wall and CPU seconds per step; %peak = (FLOP per CPU-second) / the matmul's; memory in MiB")
  print(f"{'variant':12s} {'trainable':>9s} {'wall s':>6s} {'(med)':>6s} {'cpu s':>6s} {'tok/s':>6s} "
        f"{'wall/full':>9s} {'cpu/full':>8s} {'GFLOP':>5s} {'FLOP/full':>9s} {'GFLOP/s':>7s} "
        f"{'%peak':>5s} {'opt MiB':>7s} {'opt/full':>8s} {'XLA peak':>8s} {'XLA temp':>8s} "
        f"{'RSS step':>8s}")
  for r in rows:
    tm, flops = r["timer"], r["flops"]
    print(f"{r['name']:12s} {r['trainable'] / 1e6:8.2f}M {tm.best:6.2f} {tm.median:6.2f} "
          f"{tm.cpu_best:6.2f} {tokens / tm.best:6.0f} "
          f"{rel(tm.best, full and full['timer'].best):>9s} "
          f"{rel(tm.cpu_best, full and full['timer'].cpu_best):>8s} "
          f"{(flops or 0) / 1e9:5.0f} {rel(flops, full and full['flops']):>9s} "
          f"{(flops or 0) / tm.best / 1e9:7.1f} "
          f"{100 * (flops or 0) / tm.cpu_best / matmul.peak_per_cpu_s:5.1f} "
          f"{mib(r['opt']):>7s} {rel(r['opt'], full and full['opt']):>8s} "
          f"{mib(r['xla_peak']):>8s} {mib(r['xla_temp']):>8s} {mib(r['timer'].rss_peak):>8s}")
  print("-" * len(line))
  if full and "region" in by:
    r = by["region"]
    ratio, cpu_ratio = r["timer"].best / full["timer"].best, r["timer"].cpu_best / full["timer"].cpu_best
    print(f"region / full step time      {ratio:6.3f} wall, {cpu_ratio:.3f} CPU  goal <= {GOALS['step']}: "
          f"{'ok' if ratio <= GOALS['step'] else 'MISSED'} (FLOP ratio {r['flops'] / full['flops']:.3f}: "
          "the floor unless work is skipped)")
    ratio = r["opt"] / full["opt"]
    print(f"region / full optimizer      {ratio:6.3f}  goal <= {GOALS['opt']}: "
          f"{'ok' if ratio <= GOALS['opt'] else 'MISSED'}")
  fastest_torch = {kind: min((r for r in rows if r["name"].startswith(f"torch {kind} ")),
                             key=lambda r: r["timer"].best, default=None) for kind in ("full", "region")}
  if full and fastest_torch["full"]:
    fastest = fastest_torch["full"]
    ratio = fastest["timer"].best / full["timer"].best
    cpu_fastest = min(r["timer"].cpu_best for r in rows if r["name"].startswith("torch full "))
    print(f"JAX / PyTorch full tokens/s  {ratio:6.3f} wall (vs {fastest['name']}), "
          f"{cpu_fastest / full['timer'].cpu_best:.3f} CPU  goal >= {GOALS['torch']}: "
          f"{'ok' if ratio >= GOALS['torch'] else 'MISSED'}")
  if fastest_torch["full"] and fastest_torch["region"]:
    print(f"PyTorch region / full step   {fastest_torch['region']['timer'].best / fastest_torch['full']['timer'].best:6.3f}"
          " wall (8 of 30 layers with requires_grad, each at its fastest thread count; the "
          "JAX ratio above also trains the projector, PyTorch's runs have none)")
  print(line)
  print("step times (s): " + "; ".join(f"{r['name']} {[round(t, 2) for t in r['timer'].times]}"
                                       for r in rows))
  print("XLA peak = argument + output - aliased + temp bytes of the compiled step (device.memory_stats() "
        "is None on CPU); RSS step = max VmHWM growth over VmRSS at the start of a timed step "
        "(transient memory only: resident parameters and optimizer state excluded).")


if __name__ == "__main__":
  sys.exit(main())
