"""The JAX side of the train-step benchmarks: the demo's step as `train.loop.run` builds it.

A random demo-sized CLIP tower and configs/demo.py (`write_random_tower`,
`demo_config`), one jitted, ahead-compiled step per trainable set (`Variant`), a
batch shaped as the pipeline collates (`synthetic_batch`), and the step's matmul
FLOPs (`model_flops`), which say how far a region can cut step time at all.
Shared by bench_train_step.py and bench_data.py.
"""

import contextlib
import json
import os
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "demo.py")
# The demo's tower (configs/demo.py demo.tower; demo/vision_pretrain.py uses 4x MLP).
TOWER = dict(image_size=48, patch_size=8, hidden_size=128, num_layers=4, num_heads=4)


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
  from visregion_jax.config.loading import expand_workdir, load_config_file  # pylint: disable=import-outside-toplevel
  config = load_config_file(DEMO_CONFIG)
  with config.unlocked():
    config.workdir = workdir
    config.model.vision_tower = tower_dir
    config.hook = ""  # the tower is ready and the data written by the caller
    config.model.dtype = "float32"
    for key, value in region.items():
      config.region[key] = value
  return expand_workdir(config, workdir)


@contextlib.contextmanager
def decoder_loaded_once(num_layers=None):
  """Makes `builder.build_model` load each decoder once in this block, with its first
  `num_layers` layers only when given (a fast run of the benchmark's code paths).

  Every variant starts from the same SmolLM2 weights; loading (dequantizing the
  GGUF) once saves ~10 s and ~0.5 GB per variant. Safe because build_model never
  mutates the decoder (compose_lvlm copies it into a new LVLM); the trainable
  arrays are copied before their buffers are donated (see `Variant`).
  """
  from visregion_jax.prune.layers import drop_layers  # pylint: disable=import-outside-toplevel
  from visregion_jax.train import builder  # pylint: disable=import-outside-toplevel
  original, cache = builder.from_hf, {}

  def cached(path, **kwargs):
    key = (path, tuple(sorted(kwargs.items())))
    if key not in cache:
      model = original(path, **kwargs)
      if num_layers and num_layers < len(model.layers):
        model = drop_layers(model, range(num_layers, len(model.layers)))
      cache[key] = model
    return cache[key]

  builder.from_hf = cached
  try:
    yield
  finally:
    builder.from_hf = original


class Variant:
  """One trainable set: the model split and jitted as `train.run` does, compiled ahead."""

  def __init__(self, name: str, config, workdir: str):
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from jax.sharding import NamedSharding  # pylint: disable=import-outside-toplevel

    from visregion_jax import optim, sharding  # pylint: disable=import-outside-toplevel
    from visregion_jax.train.builder import build_model  # pylint: disable=import-outside-toplevel
    from visregion_jax.train.step import make_train_step  # pylint: disable=import-outside-toplevel
    self.name, self.config = name, config
    t = config.train
    self.mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    from visregion_jax.train.flops import step_flops  # pylint: disable=import-outside-toplevel
    model, self.plan = build_model(config, workdir)
    self.model_config, self.layers = model.config, self.plan.region_layers
    self.flops = step_flops(model, self.plan)  # the model FLOPs of a host batch, as the logs count them
    graphdef, params, frozen, rest = self.plan.split(model)
    self.graphdef = graphdef
    del model
    # Fresh buffers: donation must not delete arrays shared with the cached decoder.
    params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
    self.params = jax.device_put(params, sharding.state_shardings(params, self.mesh))
    self.frozen = jax.device_put(frozen, sharding.state_shardings(frozen, self.mesh))
    self.rest = jax.device_put(rest, sharding.replicated(self.mesh))
    self.labels = self.plan.labels(self.params)
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


def tree_bytes(tree) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(tree))


def tree_size(tree) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return sum(int(getattr(x, "size", 0)) for x in jax.tree.leaves(tree))


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


# `model_flops` as the table's footnote prints it.
FLOP_FORMULA = ("T*(4*N_layers + 2*N_layers_trainable + 6*N_lora + 4*V*E + 12*S*E*L) "
                "+ 6*N_proj*T_img + 2*N_vision*T_patch")


def model_flops(variant: Variant, batch: int, length: int) -> int:
  """FLOPs of one step's matmuls (`FLOP_FORMULA`), counted as XLA runs them.

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
  return per_token * tokens + 6 * c["projector"] * image_tokens + 2 * c["vision"] * vision_tokens
