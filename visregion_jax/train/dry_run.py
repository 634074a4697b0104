"""`--config.dry_run=True`: what one device of the config's mesh will hold, before any
weight is read, so a 7B/13B run that cannot fit fails in seconds, not after loading.

The model is built abstractly (`nnx.eval_shape`: shapes only) from the config.json of
a local `model.init_from` (an llava-hf directory, or a decoder joined with
`model.vision_tower` as training does: model_spec.py), else from the `model.architecture`
preset of one of the paper's models, and gets LoRA on the region layers as training
does. Each parameter is then placed as training places it: the training plan's label makes
it trainable (float32 master copy) or frozen (compute dtype), and
`sharding.partition_spec` splits each dimension over the mesh axis it maps to.

Per-device figures (B = micro-batch per device = batch_size / grad_accum /
(data * fsdp), T = data.max_length, E / I / V = hidden / MLP / vocabulary size,
H, KV, d = heads, KV heads, head dim, L = decoder layers, r = LoRA rank, b = bytes of
the compute dtype):
  parameters   each shard's elements x (4 if trainable else b)
  optimizer    AdamW mu + nu: 2 x the trainable shards, float32 (sharded like their
               parameters, as `tx.init` run on the sharded parameters places them)
  gradients    2 x the trainable shards, float32 (scan accumulator + micro-batch gradient)
  activations  remat (the layer input is all a layer keeps for its backward):
                 L * B*T*E*b + mask + max(layer working set, loss working set)
               no remat (every layer keeps its working set):
                 sum over layers of the working set + mask + loss working set
    layer working set = B*T*b*(3E + H*d + (2H + 3KV)*d + 3I)   norms' outputs, q/k/v,
                                                        roped q/k, attention out,
                                                        residuals, MLP (gate, up, their
                                                        product; models/elementwise.py)
                      + attention (below)
                      + B*T*(5E + H*d + I)              LoRA dropout masks, a byte per
                                                        input element (an upper bound: XLA
                                                        keeps no dropped input; dropout.py)
                      + B*T*b*7r                        LoRA rank-r outputs (both: region
                                                        layers with LoRA only)
                      + the layer's weights gathered over fsdp (its params * b / tensor)
    loss working set  = B*Tt*V*(b + 4 + 4)       logits, their fp32 copy, fp32 log-softmax
                                                 of one tile of Tt positions per row:
                                                 Tt = T untiled, else ceil(T / tiles)
                                                 (`model.loss_tiles`; 0 tiles when
                                                 B*T*V*4 > 64 MiB, in tiles of at most
                                                 that: tiled_loss.py)
  attention, by `model.attention` (both are printed):
    XLA path          = B*H*T*T*b                the probabilities in the compute dtype,
                                                 all its backward keeps (dense_attention.py)
      mask            = B*T*T bytes              the boolean mask all layers share
    fused (splash)    = B*Tp*(b*(2H + 2KV)*d + 4H)  the kernel's residuals: q, k, v, output
                                                 in its layout, fp32 log-sum-exp per query
                      + B*H*Tp*128*4             the log-sum-exp as the forward writes it,
                                                 one 128-lane row per query (transient)
      mask            = B*Tp*4                   int32 segment ids instead (Tp = T padded
                                                 to 128); no T x T term anywhere
Activations are assumed split over the batch axes only (not over `tensor`: an upper
bound there). The vision tower runs forward only (no gradient enters it unless
region.train_vision) and its transient activations are not counted.

tests/test_compiled_memory.py holds the no-remat formula, for both paths, to within
15% of XLA's own figure for the compiled training step (train/compiled_memory.py) of
a scaled-down LVLM on 8 simulated CPU devices. The remat figure cannot be checked
there: XLA:CPU's schedule does not realize remat's savings (the compiled step is as
large with remat as without).
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from visregion_jax import model_spec, sharding
from visregion_jax.convert.params import default_compute_dtype
from visregion_jax.models.attention import resolve
from visregion_jax.models.kernel_padding import LANE, round_up
from visregion_jax.models.llama import Decoder
from visregion_jax.models.lvlm import LVLM, LVLMConfig
from visregion_jax.plan import FROZEN, TrainingPlan, decoder_layer_of
from visregion_jax.tiled_loss import tile_tokens
from visregion_jax.train.batching import check_batch
from visregion_jax.train.validate import scored_stand_in

GIB = 2 ** 30


def abstract_model(model_cfg, plan: TrainingPlan, seed: int):
  """The model with LoRA attached to the region layers, every array a ShapeDtypeStruct.

  Traced with one layer per stack (decoder, vision tower), whose layer lists are then
  filled with clones of that layer: one `nnx.eval_shape` of a whole 7B LVLM takes about
  20 s, because each RNG draw in a trace walks the whole trace so far (flax 0.12 reads
  the count's `sharding`, and jax formats an error over the trace), which is quadratic
  in the number of layers. Same modules, paths and shapes, in a second or two.
  """
  def one_layer(cfg):
    return cfg.replace(num_layers=1)

  if isinstance(model_cfg, LVLMConfig):
    small = model_cfg.replace(text=one_layer(model_cfg.text), vision=one_layer(model_cfg.vision))
    model = nnx.eval_shape(lambda: LVLM(small, rngs=nnx.Rngs(seed)))
    model.config = model_cfg
    stacks = ((model.language_model, model_cfg.text), (model.vision_tower, model_cfg.vision))
  else:
    model = nnx.eval_shape(lambda: Decoder(one_layer(model_cfg), rngs=nnx.Rngs(seed)))
    stacks = ((model, model_cfg),)
  for module, cfg in stacks:
    module.config = cfg
    module.layers = nnx.List([nnx.clone(module.layers[0]) for _ in range(cfg.num_layers)])
  def prepared(m):
    plan.prepare(m, seed)
    return m
  return nnx.eval_shape(prepared, model)


# --- accounting ---------------------------------------------------------------------
def parameter_bytes(model, plan: TrainingPlan, mesh, compute_itemsize: int) -> tuple:
  """({label: parameter count}, {label: bytes on one device}, {layer: params of that layer})."""
  counts, local_bytes, per_layer = {}, {}, {}
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    shape = tuple(variable.get_value().shape)
    label = plan.label(path, variable)
    spec = sharding.partition_spec(shape, variable.get_metadata().get("logical_axes"), mesh)
    local = NamedSharding(mesh, spec).shard_shape(shape)
    itemsize = compute_itemsize if label == FROZEN else 4
    counts[label] = counts.get(label, 0) + math.prod(shape)
    local_bytes[label] = local_bytes.get(label, 0) + math.prod(local) * itemsize
    layer = decoder_layer_of(tuple(path))
    if layer is not None:
      per_layer[layer] = per_layer.get(layer, 0) + math.prod(shape)
  return counts, local_bytes, per_layer


def attention_bytes(micro: int, seq: int, h: int, kv: int, d: int, b: int, fused: bool) -> tuple:
  """(one layer's attention activations, the mask all layers share), in bytes (see the
  module docstring)."""
  if not fused:
    return micro * h * seq * seq * b, micro * seq * seq
  padded = round_up(seq, LANE)
  residuals = micro * padded * (b * (2 * h + 2 * kv) * d + 4 * h)
  return residuals + micro * h * padded * LANE * 4, micro * padded * 4


def activation_bytes(text, config, mesh, micro: int, plan: TrainingPlan, per_layer: dict, b: int,
                     fused: bool) -> dict:
  """The activation terms of the module docstring, in bytes on one device, for the XLA
  attention or a fused kernel (`fused`)."""
  seq, r = config.data.max_length, plan.lora_rank
  e, i, v = text.hidden_size, text.intermediate_size, text.vocab_size
  h, kv, d = text.num_heads, text.num_kv_heads, text.head_dim
  attn, mask = attention_bytes(micro, seq, h, kv, d, b, fused)
  base = micro * seq * b * (3 * e + h * d + (2 * h + 3 * kv) * d + 3 * i) + attn
  lora = micro * seq * (5 * e + h * d + i + b * 7 * r) if r else 0

  def working(layer: int) -> int:
    gathered = per_layer.get(layer, 0) * b // mesh.shape["tensor"]
    return base + (lora if layer in plan.region_layers else 0) + gathered

  tile = tile_tokens(config.model.get("loss_tiles", 0), micro, seq, v)
  loss = micro * tile * v * (b + 8)
  num_layers = text.num_layers
  if config.model.get("remat"):
    stored = num_layers * micro * seq * e * b
    peak = stored + mask + max(max(working(j) for j in range(num_layers)), loss)
  else:
    stored = sum(working(j) for j in range(num_layers))
    peak = stored + mask + loss
  return {"micro_batch": micro, "seq_len": seq, "loss_tile": tile, "stored": stored,
          "layer_working_set": max(working(j) for j in range(num_layers)), "attention": attn,
          "loss_working_set": loss, "mask": mask, "total": peak}


def estimate(config) -> dict:
  """The dry run's numbers for `config` on a mesh of this host's `jax.devices()`."""
  m = config.model
  dtype = m.get("dtype") or default_compute_dtype()
  source, spec = model_spec.describe(config)
  model_cfg = model_spec.model_config(spec, m, dtype)
  text = model_cfg.text if isinstance(model_cfg, LVLMConfig) else model_cfg
  plan = TrainingPlan.from_config(config, text.num_layers, scored_stand_in(config, text.num_layers))
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  micro = check_batch(config.train, mesh)
  model = abstract_model(model_cfg, plan, config.seed)
  b = jnp.dtype(dtype).itemsize
  counts, local_bytes, per_layer = parameter_bytes(model, plan, mesh, b)
  trainable = sum(n for label, n in local_bytes.items() if label != FROZEN)
  attention = resolve(m.get("attention", "auto"), m.get("attention_interpret", False))
  paths = {path: activation_bytes(text, config, mesh, micro, plan, per_layer, b, fused=path == "fused")
           for path in ("xla", "fused")}
  act = paths["xla" if attention == "xla" else "fused"]
  per_device = {"params_" + label: n for label, n in sorted(local_bytes.items())}
  per_device.update(optimizer_state=2 * trainable, gradients=2 * trainable, activations=act["total"])
  per_device["total"] = sum(per_device.values())
  totals = {path: per_device["total"] - act["total"] + terms["total"] for path, terms in paths.items()}
  return {"source": source, "num_devices": int(mesh.devices.size), "mesh": dict(mesh.shape),
          "compute_dtype": str(jnp.dtype(dtype)), "num_layers": text.num_layers,
          "region_layers": list(plan.region_layers), "scored": config.region.strategy == "scored",
          "lora_rank": plan.lora_rank,
          "remat": bool(m.get("remat")), "attention": attention,
          "param_counts": dict(sorted(counts.items())), "bytes_per_device": per_device,
          "activation_terms": act, "activation_paths": paths, "totals": totals,
          "device_memory": device_memory()}


def device_memory():
  """Bytes one device can hold (GPU/TPU report it; CPU does not: None)."""
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("bytes_limit")


# --- the table ----------------------------------------------------------------------
def _gib(n: int) -> str:
  return f"{n / GIB:9.2f} GiB"  # 13 characters


def format_report(e: dict) -> str:
  mesh = " ".join(f"{k}={v}" for k, v in e["mesh"].items())
  act, per = e["activation_terms"], e["bytes_per_device"]
  region_text = ("all" if len(e["region_layers"]) == e["num_layers"]
                 else ", ".join(map(str, e["region_layers"])) or "none")
  if e.get("scored"):  # counted as the first layers: no choice of as many layers needs more memory
    region_text = "chosen by the scored probe when training starts"
  update = (f"LoRA r={e['lora_rank']}" if e["lora_rank"] else "full update") if e["region_layers"] \
      else "projector only"
  remat = "remat" if e["remat"] else "no remat"
  paths = e["activation_paths"]

  def row(label: str, key: str) -> str:
    return f"    {label:56s}{_gib(paths['xla'][key])}{_gib(paths['fused'][key])}"

  lines = [
      f"dry run: {e['source']} | {e['num_devices']} devices, mesh {mesh} | compute {e['compute_dtype']}",
      f"region layers ({len(e['region_layers'])} of {e['num_layers']}): {region_text} | {update}",
      f"{'per device':44s}{'params':>16s}{'bytes':>14s}"]
  for label, count in e["param_counts"].items():
    kind = e["compute_dtype"] if label == FROZEN else "trainable, float32"
    lines.append(f"  {label + ' parameters (' + kind + ')':42s}{count:16,d}{_gib(per['params_' + label])}")
  lines += [
      f"  {'optimizer state (AdamW mu + nu, float32)':58s}{_gib(per['optimizer_state'])}",
      f"  {'gradients (accumulator + micro-batch, float32)':58s}{_gib(per['gradients'])}",
      f"  {'activations (B=%d x T=%d per device, %s)' % (act['micro_batch'], act['seq_len'], remat):58s}"
      f"{'xla':>13s}{'fused':>13s}",
      row(('stored layer inputs L*B*T*E*b' if e['remat'] else 'stored working sets, all layers'), "stored"),
      row("one layer working set (see dry_run.py)", "layer_working_set"),
      row("  of which attention (T x T scores | kernel residuals)", "attention"),
      row("loss working set B*T*V*(b+8)" if act["loss_tile"] == act["seq_len"] else
          f"loss working set B*Tt*V*(b+8), tiles of Tt={act['loss_tile']}", "loss_working_set"),
      row("attention mask B*T*T | segment ids B*T*4", "mask"),
      row("peak", "total"),
      f"  {'total':58s}{_gib(e['totals']['xla'])}{_gib(e['totals']['fused'])}",
      f"  {'this host runs model.attention as':58s}{e['attention']:>13s}",
  ]
  if e["device_memory"]:
    verdict = ", ".join(f"{path}: {'fits' if total <= e['device_memory'] else 'does NOT fit'}"
                        for path, total in e["totals"].items())
    lines.append(f"  {'device memory':58s}{_gib(e['device_memory'])}  ({verdict})")
  return "\n".join(lines)


def report(config) -> dict:
  """Prints the per-device table for `config` and returns its numbers (estimate()).

  A multi-host job is joined first, as training does, so the mesh is the global one.
  """
  sharding.maybe_initialize_distributed(config.get("distributed", False))
  e = estimate(config)
  if jax.process_index() == 0:
    print(format_report(e), flush=True)
  return e
