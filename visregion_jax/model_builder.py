"""The model a training config asks for: loaded, composed into an LVLM, given LoRA.

`model.init_from` is an llava-hf directory (an LVLM as is) or a decoder (HF directory,
GGUF, alias); a decoder is joined with the vision tower of `model.vision_tower` (an
HF CLIP/SigLIP directory) and a freshly initialized projector, and gets an `<image>`
token (one new embedding row, the mean of the others; the tokenizer is extended and
written to the workdir so exports and resumes use the same ids).
"""

import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from visregion_jax import region
from visregion_jax.convert import from_hf, tokenizer
from visregion_jax.convert.hf import default_compute_dtype, merge_params, model_params
from visregion_jax.convert.image_token import tokenizer_with_image_token
from visregion_jax.convert.vision import vision_tower_from_hf
from visregion_jax.errors import VisRegionError
from visregion_jax.models.llama import Decoder
from visregion_jax.models.lora import Dense
from visregion_jax.models.lvlm import LVLM, LVLMConfig, abstract_lvlm
from visregion_jax.models.projector import Projector


def with_image_row(decoder: Decoder) -> tuple:
  """(params with one more vocabulary row, new config): the row is the mean row."""
  params = model_params(decoder)
  for path in (("embed_tokens", "embedding"), ("lm_head", "kernel")):
    if path in params:
      w = params[path]
      axis = 0 if path[0] == "embed_tokens" else 1
      mean = jnp.mean(w.astype(jnp.float32), axis=axis, keepdims=True).astype(w.dtype)
      params[path] = jnp.concatenate([w, mean], axis=axis)
  config = decoder.config.replace(vocab_size=decoder.config.vocab_size + 1)
  return params, config


def compose_lvlm(decoder: Decoder, tower_dir: str, model_config, workdir: str, seed: int) -> LVLM:
  tower = vision_tower_from_hf(tower_dir, dtype=decoder.config.dtype)
  text_params, text_config = with_image_row(decoder)
  image_token_id = text_config.vocab_size - 1
  tokenizer_dir = os.path.join(workdir, "tokenizer")
  if tokenizer.has_tokenizer(decoder.config.source):
    tokenizer_with_image_token(decoder.config.source, image_token_id, out=tokenizer_dir)
    for name in ("preprocessor_config.json",):
      src = os.path.join(tower_dir, name)
      if os.path.isfile(src):
        with open(src, "rb") as f, open(os.path.join(tokenizer_dir, name), "wb") as g:
          g.write(f.read())
    text_config = text_config.replace(source=tokenizer_dir)
  config = LVLMConfig(text=text_config, vision=tower.config, image_token_id=image_token_id,
                      projector_type=model_config.projector_type,
                      feature_layers=tuple(model_config.feature_layers),
                      feature_strategy=model_config.feature_strategy)
  projector = Projector(config.projector_type, tower.config.hidden_size * len(config.feature_layers),
                        text_config.hidden_size, dtype=text_config.compute_dtype,
                        param_dtype=jnp.float32, rngs=nnx.Rngs(params=seed))
  values = {("language_model",) + p: v for p, v in text_params.items()}
  values.update({("vision_tower",) + p: v for p, v in model_params(tower).items()})
  values.update({("projector",) + p: v for p, v in model_params(projector).items()})
  return merge_params(abstract_lvlm(config), values)


def add_lora(model, layers, rank: int, alpha: float, dropout: float, seed: int) -> None:
  """LoRA on every linear (q, k, v, o, gate, up, down) of the given decoder layers."""
  rngs = nnx.Rngs(params=seed, dropout=seed + 1)
  for i in layers:
    for _, module in model.layers[i].iter_modules():
      if isinstance(module, Dense):
        module.add_lora(rank, alpha, dropout, rngs)


def cast_for_training(model, labels_of) -> None:
  """Trainable parameters as float32 master copies, frozen ones in the compute dtype."""
  compute = model.config.compute_dtype
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    dtype = jnp.float32 if labels_of(path) != region.FROZEN else compute
    if variable.get_value().dtype != dtype:
      variable.set_value(variable.get_value().astype(dtype))


def build_model(config, workdir: str):
  """(model, region layers) for a training config; the model is ready to split."""
  m = config.model
  dtype = m.get("dtype") or default_compute_dtype()
  model = from_hf(m.init_from, dtype=dtype)
  if isinstance(model, Decoder) and m.get("vision_tower"):
    model = compose_lvlm(model, m.vision_tower, m, workdir, config.seed)
  r = config.region
  layers = region.select_layers(len(model.layers), r.fraction, r.strategy, list(r.get("layers") or ()))
  if r.lora_rank < 0:
    raise VisRegionError("region.lora_rank", f"expected 0 (full update) or a positive rank, got {r.lora_rank}")
  if r.lora_rank:
    add_lora(model, layers, r.lora_rank, r.lora_alpha, r.lora_dropout, config.seed)
  labels_of = lambda path: region.label_of(tuple(path), layers, lora=r.lora_rank > 0,
                                           train_vision=r.train_vision)
  cast_for_training(model, labels_of)
  if m.get("remat"):
    set_remat(model)
  return model, layers


def set_remat(model) -> None:
  decoder = model.language_model if isinstance(model, LVLM) else model
  decoder.config = decoder.config.replace(remat=True)


def fingerprint(model) -> str:
  """A cheap identity of the frozen base: shapes, dtypes and a strided value sample."""
  import hashlib  # pylint: disable=import-outside-toplevel
  h = hashlib.sha256()
  for path, value in sorted(model_params(model).items(), key=lambda kv: str(kv[0])):
    sample = np.asarray(value.reshape(-1)[:: max(1, value.size // 64)][:64], np.float32)
    h.update(f"{path}{value.shape}{value.dtype}".encode())
    h.update(sample.tobytes())
  return h.hexdigest()[:16]
