"""`--config.dry_run=True`: what one device of the config's mesh will hold, before any
weight is read, so a 7B/13B run that cannot fit fails in seconds, not after loading.

The model is built abstractly (`nnx.eval_shape`: shapes only) from the config.json of
a local `model.init_from` (an llava-hf directory, or a decoder joined with
`model.vision_tower` as model_builder does), else from the `model.architecture`
preset of one of the paper's models, and gets LoRA on the region layers as training
does. Each parameter is then placed as training places it: `region.label_of` makes
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
    layer working set = B*T*b*(5E + H*d + (2H + 3KV)*d + 4I)   norms, q/k/v, roped q/k,
                                                        attention out, residuals, MLP
                      + B*H*T*T*(4 + 4 + b)      attention logits and softmax (fp32), probs
                      + B*T*b*(5E + H*d + I + 7r)  LoRA dropout inputs and rank-r outputs
                                                   (region layers with LoRA only)
                      + the layer's weights gathered over fsdp (its params * b / tensor)
    loss working set  = B*T*V*(b + 4 + 4)        logits, their fp32 copy, fp32 log-softmax
    mask              = B*T*T bytes              the boolean attention mask all layers share
Activations are assumed split over the batch axes only (not over `tensor`: an upper
bound there), with the XLA attention (the T x T scores are materialized). The vision
tower runs forward only (no gradient enters it unless region.train_vision) and its
transient activations are not counted.
"""

import math
import os

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from visregion_jax import model_builder, region, sharding
from visregion_jax.convert import hf_config, llava, tensor_files
from visregion_jax.convert.hf import default_compute_dtype
from visregion_jax.convert.vision_config import vision_config_from_hf
from visregion_jax.errors import VisRegionError
from visregion_jax.models.llama import Decoder
from visregion_jax.models.lvlm import LVLM, LVLMConfig

GIB = 2 ** 30

# --- the paper's models, as the HF config.json files describe them --------------------
CLIP_VIT_L_14_336 = {  # openai/clip-vit-large-patch14-336, vision_config
    "model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
    "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
SIGLIP_SO400M_14_384 = {  # google/siglip-so400m-patch14-384, vision_config
    "model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
    "num_hidden_layers": 27, "num_attention_heads": 16, "image_size": 384, "patch_size": 14,
    "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "vision_use_head": True}


def _vicuna(hidden: int, intermediate: int, layers: int, heads: int) -> dict:
  """llava-hf's text_config of Vicuna-v1.5: vocabulary padded to 32064 (image token 32000)."""
  return {"model_type": "llama", "vocab_size": 32064, "hidden_size": hidden,
          "intermediate_size": intermediate, "num_hidden_layers": layers,
          "num_attention_heads": heads, "num_key_value_heads": heads,
          "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
          "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 32001}


def _llava_15(text: dict) -> dict:
  """llava-hf/llava-1.5-*-hf config.json: the text config, CLIP-L/336, mlp2x_gelu."""
  return {"model_type": "llava", "text_config": text, "vision_config": CLIP_VIT_L_14_336,
          "image_token_index": 32000, "projector_hidden_act": "gelu",
          "vision_feature_layer": -2, "vision_feature_select_strategy": "default"}


LLAMA_3_8B = {  # meta-llama/Meta-Llama-3-8B-Instruct
    "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128009}
PHI_3_MINI_4K = {  # microsoft/Phi-3-mini-4k-instruct
    "model_type": "phi3", "vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "sliding_window": 2047, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 32000,
    "pad_token_id": 32000}

# name -> an llava-hf config ("llava") or a decoder + vision tower that model_builder joins.
ARCHITECTURES = {
    "llava-1.5-7b": {"llava": _llava_15(_vicuna(4096, 11008, 32, 32))},
    "llava-1.5-13b": {"llava": _llava_15(_vicuna(5120, 13824, 40, 40))},
    "bunny-llama3-8b": {"decoder": LLAMA_3_8B, "vision": SIGLIP_SO400M_14_384},
    "bunny-phi3-mini": {"decoder": PHI_3_MINI_4K, "vision": SIGLIP_SO400M_14_384},
}


# --- the model, shapes only ---------------------------------------------------------
def _read_local(m) -> tuple:
  """(description, {"llava": d} or {"decoder": d, "vision": d or None}) from local files, or None."""
  path = str(m.get("init_from") or "")
  config_path = os.path.join(path, "config.json")
  if not path or not os.path.isfile(config_path):
    return None
  d = tensor_files.read_json_object(config_path)
  if d.get("model_type") == "llava":
    return path, {"llava": d, "where": config_path}
  tower = str(m.get("vision_tower") or "")
  tower_config = os.path.join(tower, "config.json")
  vision = tensor_files.read_json_object(tower_config) if tower else None
  return path, {"decoder": d, "vision": vision, "where": config_path, "vision_where": tower_config}


def model_spec(config) -> tuple:
  """(where the shapes come from, the config dicts): local config.json first, then the preset."""
  m = config.model
  local = _read_local(m)
  if local is not None:
    return local
  name = m.get("architecture", "")
  if name in ARCHITECTURES:
    return f"preset {name}", ARCHITECTURES[name]
  raise VisRegionError("model.architecture", f"expected one of {sorted(ARCHITECTURES)} when "
                       f"model.init_from ({m.get('init_from')!r}) is not a local directory with "
                       f"config.json, got {name!r}")


def model_config(spec: dict, m, dtype: str):
  """The LVLMConfig (or DecoderConfig, for a decoder without a vision tower) training builds."""
  where = spec.get("where", "model.architecture")
  if "llava" in spec:
    return llava.lvlm_config_from_hf(spec["llava"], where, dtype=dtype, param_dtype=None, source="")
  text = hf_config.decoder_config_from_hf(spec["decoder"], where, dtype=dtype)
  if spec.get("vision") is None:
    return text
  vision = vision_config_from_hf(spec["vision"], spec.get("vision_where", where), dtype=dtype)
  text = text.replace(vocab_size=text.vocab_size + 1)  # model_builder's <image> row
  return LVLMConfig(text=text, vision=vision, image_token_id=text.vocab_size - 1,
                    projector_type=m.projector_type, feature_layers=tuple(m.feature_layers),
                    feature_strategy=m.feature_strategy)


def abstract_model(model_cfg, layers: tuple, r, seed: int):
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
  if not r.lora_rank:
    return model

  def with_lora(m):
    model_builder.add_lora(m, layers, r.lora_rank, r.lora_alpha, r.lora_dropout, seed)
    return m
  return nnx.eval_shape(with_lora, model)


# --- accounting ---------------------------------------------------------------------
def parameter_bytes(model, layers: tuple, r, mesh, compute_itemsize: int) -> tuple:
  """({label: parameter count}, {label: bytes on one device}, {layer: params of that layer})."""
  counts, local_bytes, per_layer = {}, {}, {}
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    shape = tuple(variable.get_value().shape)
    label = region.label_of(tuple(path), layers, lora=r.lora_rank > 0, train_vision=r.train_vision)
    spec = sharding.partition_spec(shape, variable.get_metadata().get("logical_axes"), mesh)
    local = NamedSharding(mesh, spec).shard_shape(shape)
    itemsize = compute_itemsize if label == region.FROZEN else 4
    counts[label] = counts.get(label, 0) + math.prod(shape)
    local_bytes[label] = local_bytes.get(label, 0) + math.prod(local) * itemsize
    layer = region.decoder_layer_of(tuple(path))
    if layer is not None:
      per_layer[layer] = per_layer.get(layer, 0) + math.prod(shape)
  return counts, local_bytes, per_layer


def activation_bytes(text, config, mesh, layers: tuple, per_layer: dict, b: int) -> dict:
  """The activation terms of the module docstring, in bytes on one device."""
  t = config.train
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  micro = math.ceil(t.batch_size / t.grad_accum / batch_shards)
  seq, r = config.data.max_length, config.region.lora_rank
  e, i, v = text.hidden_size, text.intermediate_size, text.vocab_size
  h, kv, d = text.num_heads, text.num_kv_heads, text.head_dim
  base = micro * seq * b * (5 * e + h * d + (2 * h + 3 * kv) * d + 4 * i) + micro * h * seq * seq * (8 + b)
  lora = micro * seq * b * (5 * e + h * d + i + 7 * r) if r else 0

  def working(layer: int) -> int:
    gathered = per_layer.get(layer, 0) * b // mesh.shape["tensor"]
    return base + (lora if layer in layers else 0) + gathered

  loss = micro * seq * v * (b + 8)
  mask = micro * seq * seq
  num_layers = text.num_layers
  if config.model.get("remat"):
    stored = num_layers * micro * seq * e * b
    peak = stored + mask + max(max(working(j) for j in range(num_layers)), loss)
  else:
    stored = sum(working(j) for j in range(num_layers))
    peak = stored + mask + loss
  return {"micro_batch": micro, "seq_len": seq, "stored": stored,
          "layer_working_set": max(working(j) for j in range(num_layers)),
          "loss_working_set": loss, "mask": mask, "total": peak}


def estimate(config) -> dict:
  """The dry run's numbers for `config` on a mesh of this host's `jax.devices()`."""
  m, r = config.model, config.region
  dtype = m.get("dtype") or default_compute_dtype()
  source, spec = model_spec(config)
  model_cfg = model_config(spec, m, dtype)
  text = model_cfg.text if isinstance(model_cfg, LVLMConfig) else model_cfg
  if r.lora_rank < 0:
    raise VisRegionError("region.lora_rank", f"expected 0 (full update) or a positive rank, got {r.lora_rank}")
  layers = region.select_layers(text.num_layers, r.fraction, r.strategy, list(r.get("layers") or ()))
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.train.batch_size % batch_shards:
    raise VisRegionError("train.batch_size", f"expected a multiple of mesh data * fsdp = {batch_shards} "
                         f"(the batch is split over those axes), got {config.train.batch_size}")
  model = abstract_model(model_cfg, layers, r, config.seed)
  b = jnp.dtype(dtype).itemsize
  counts, local_bytes, per_layer = parameter_bytes(model, layers, r, mesh, b)
  trainable = sum(n for label, n in local_bytes.items() if label != region.FROZEN)
  act = activation_bytes(text, config, mesh, layers, per_layer, b)
  per_device = {"params_" + label: n for label, n in sorted(local_bytes.items())}
  per_device.update(optimizer_state=2 * trainable, gradients=2 * trainable, activations=act["total"])
  per_device["total"] = sum(per_device.values())
  return {"source": source, "num_devices": int(mesh.devices.size), "mesh": dict(mesh.shape),
          "compute_dtype": str(jnp.dtype(dtype)), "num_layers": text.num_layers,
          "region_layers": list(layers), "lora_rank": r.lora_rank, "remat": bool(m.get("remat")),
          "param_counts": dict(sorted(counts.items())), "bytes_per_device": per_device,
          "activation_terms": act, "device_memory": device_memory()}


def device_memory():
  """Bytes one device can hold (GPU/TPU report it; CPU does not: None)."""
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("bytes_limit")


# --- the table ----------------------------------------------------------------------
def _gib(n: int) -> str:
  return f"{n / GIB:9.2f} GiB"


def format_report(e: dict) -> str:
  mesh = " ".join(f"{k}={v}" for k, v in e["mesh"].items())
  act, per = e["activation_terms"], e["bytes_per_device"]
  region_text = ("all" if len(e["region_layers"]) == e["num_layers"]
                 else ", ".join(map(str, e["region_layers"])) or "none")
  update = (f"LoRA r={e['lora_rank']}" if e["lora_rank"] else "full update") if e["region_layers"] \
      else "projector only"
  lines = [
      f"dry run: {e['source']} | {e['num_devices']} devices, mesh {mesh} | compute {e['compute_dtype']}",
      f"region layers ({len(e['region_layers'])} of {e['num_layers']}): {region_text} | {update}",
      f"{'per device':44s}{'params':>16s}{'bytes':>14s}"]
  for label, count in e["param_counts"].items():
    kind = e["compute_dtype"] if label == region.FROZEN else "trainable, float32"
    lines.append(f"  {label + ' parameters (' + kind + ')':42s}{count:16,d}{_gib(per['params_' + label])}")
  lines += [
      f"  {'optimizer state (AdamW mu + nu, float32)':58s}{_gib(per['optimizer_state'])}",
      f"  {'gradients (accumulator + micro-batch, float32)':58s}{_gib(per['gradients'])}",
      f"  activations (B={act['micro_batch']} x T={act['seq_len']} per device, "
      f"{'remat' if e['remat'] else 'no remat'}):",
      f"    {('stored layer inputs L*B*T*E*b' if e['remat'] else 'stored working sets, all layers'):56s}"
      f"{_gib(act['stored'])}",
      f"    {'one layer working set (see dry_run.py)':56s}{_gib(act['layer_working_set'])}",
      f"    {'loss working set B*T*V*(b+8)':56s}{_gib(act['loss_working_set'])}",
      f"    {'attention mask B*T*T':56s}{_gib(act['mask'])}",
      f"    {'peak':56s}{_gib(act['total'])}",
      f"  {'total':58s}{_gib(per['total'])}"]
  if e["device_memory"]:
    verdict = "fits" if per["total"] <= e["device_memory"] else "does NOT fit"
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
