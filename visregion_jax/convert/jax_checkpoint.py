"""The JAX side of the converter: a model saved as an orbax checkpoint directory.

Layout: `visregion_model.json` (the DecoderConfig), `params/` (orbax, one entry per
parameter path), `tokenizer/` (when the source had one). Self-contained, so the
directory can move between machines and still export to HF.
"""

import dataclasses
import json
import os

import jax
import orbax.checkpoint as ocp

from visregion_jax.convert import tokenizer
from visregion_jax.convert.hf import merge_params, model_params
from visregion_jax.convert.mapping import format_path, parse_path
from visregion_jax.convert.tensor_files import read_json_object
from visregion_jax.errors import VisRegionError
from visregion_jax.models.config import DecoderConfig
from visregion_jax.models.llama import Decoder, abstract_decoder

MODEL_CONFIG = "visregion_model.json"
_TUPLE_FIELDS = ("rope_scaling", "eos_token_ids")


def is_model_checkpoint(path: str) -> bool:
  return os.path.isfile(os.path.join(path, MODEL_CONFIG))


def config_from_json(d: dict, where: str) -> DecoderConfig:
  fields = {f.name for f in dataclasses.fields(DecoderConfig)}
  unknown = sorted(set(d) - fields)
  if unknown:
    raise VisRegionError(f"{where}: {unknown[0]}", "unknown model config key")
  d = dict(d)
  for key in _TUPLE_FIELDS:
    if key in d:
      d[key] = tuple(tuple(x) if isinstance(x, list) else x for x in d[key])
  try:
    return DecoderConfig(**d)
  except TypeError as e:
    raise VisRegionError(where, f"expected a complete model config ({e})") from None


def save_model(model: Decoder, directory: str) -> str:
  """Writes the model; refuses a non-empty directory rather than mixing two models."""
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and os.listdir(directory):
    raise VisRegionError(directory, "expected a new or empty directory")
  os.makedirs(directory, exist_ok=True)
  config = model.config.replace(num_layers=len(model.layers))
  tokenizer_dir = os.path.join(directory, "tokenizer")
  os.makedirs(tokenizer_dir)
  if tokenizer.save_tokenizer(config.source, tokenizer_dir):
    config = config.replace(source="tokenizer")  # relative: the directory may move
  else:
    os.rmdir(tokenizer_dir)
    config = config.replace(source="")
  params = {format_path(p): v for p, v in model_params(model).items()}
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(directory, "params"), params)
  checkpointer.wait_until_finished()
  with open(os.path.join(directory, MODEL_CONFIG), "w", encoding="utf-8") as f:
    json.dump(dataclasses.asdict(config), f, indent=2)
  return directory


def load_model(directory: str) -> Decoder:
  directory = os.path.abspath(directory)
  config_path = os.path.join(directory, MODEL_CONFIG)
  config = config_from_json(read_json_object(config_path), config_path)
  if config.source and not os.path.isabs(config.source):
    config = config.replace(source=os.path.join(directory, config.source))
  abstract = abstract_decoder(config)
  target = {format_path(p): jax.ShapeDtypeStruct(v.shape, v.dtype)
            for p, v in model_params(abstract).items()}
  params_dir = os.path.join(directory, "params")
  if not os.path.isdir(params_dir):
    raise VisRegionError(params_dir, "expected the orbax parameter checkpoint")
  try:
    restored = ocp.StandardCheckpointer().restore(params_dir, target)
  except Exception as e:  # orbax raises many types for missing / mismatched / corrupt data
    raise VisRegionError(params_dir, f"expected parameters matching {MODEL_CONFIG} "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
  return merge_params(abstract, {parse_path(k): v for k, v in restored.items()})
