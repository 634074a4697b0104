"""The JAX side of the converter: a model saved as an orbax checkpoint directory.

Layout: `visregion_model.json` (the model kind and its config), `params/` (orbax, one
entry per parameter path), `tokenizer/` (tokenizer and processor files, when the
source had them). Self-contained, so the
directory can move between machines and still export to HF.
"""

import dataclasses
import json
import os

import jax
import orbax.checkpoint as ocp

from visregion_jax.convert import tokenizer
from visregion_jax.convert.mapping import format_path, parse_path
from visregion_jax.convert.params import merge_params, model_params
from visregion_jax.convert.tensor_files import read_json_object
from visregion_jax.errors import VisRegionError
from visregion_jax.models.config import DecoderConfig
from visregion_jax.models.llama import abstract_decoder
from visregion_jax.models.lvlm import LVLMConfig, abstract_lvlm
from visregion_jax.models.vision import VisionConfig

MODEL_CONFIG = "visregion_model.json"
# kind -> (config class, abstract model builder, nested config fields)
_KINDS = {
    "decoder": (DecoderConfig, abstract_decoder, {}),
    "lvlm": (LVLMConfig, abstract_lvlm, {"text": DecoderConfig, "vision": VisionConfig}),
}


def is_model_checkpoint(path: str) -> bool:
  return os.path.isfile(os.path.join(path, MODEL_CONFIG))


def _kind_of(config) -> str:
  return next(kind for kind, (cls, _, _) in _KINDS.items() if isinstance(config, cls))


def _dataclass_from_json(cls, d, where: str, nested: dict):
  if not isinstance(d, dict):
    raise VisRegionError(where, "expected a JSON object")
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - fields)
  if unknown:
    raise VisRegionError(f"{where}: {unknown[0]}", "unknown model config key")
  values = {}
  for key, value in d.items():
    if key in nested:
      value = _dataclass_from_json(nested[key], value, f"{where}: {key}", {})
    elif isinstance(value, list):  # JSON has no tuples; configs hold tuples to stay hashable
      value = tuple(tuple(x) if isinstance(x, list) else x for x in value)
    values[key] = value
  try:
    return cls(**values)
  except TypeError as e:
    raise VisRegionError(where, f"expected a complete model config ({e})") from None


def config_from_json(d: dict, where: str):
  unknown = sorted(set(d) - {"kind", "config"})
  if unknown:
    raise VisRegionError(f"{where}: {unknown[0]}", "unknown key (expected kind and config)")
  kind = d.get("kind")
  if kind not in _KINDS:
    raise VisRegionError(f"{where}: kind", f"expected one of {sorted(_KINDS)}, got {kind!r}")
  cls, _, nested = _KINDS[kind]
  return _dataclass_from_json(cls, d.get("config"), f"{where}: config", nested)


def _with_source(config, source: str):
  if isinstance(config, LVLMConfig):
    return config.replace(text=config.text.replace(source=source))
  return config.replace(source=source)


def write_model(model, directory: str) -> str:
  """Writes the model; refuses a non-empty directory rather than mixing two models."""
  directory = os.path.abspath(directory)
  if os.path.isdir(directory) and os.listdir(directory):
    raise VisRegionError(directory, "expected a new or empty directory")
  os.makedirs(directory, exist_ok=True)
  config = model.config
  tokenizer_dir = os.path.join(directory, "tokenizer")
  os.makedirs(tokenizer_dir)
  if tokenizer.save_tokenizer(config.source, tokenizer_dir):
    config = _with_source(config, "tokenizer")  # relative: the directory may move
  else:
    os.rmdir(tokenizer_dir)
    config = _with_source(config, "")
  params = {format_path(p): v for p, v in model_params(model).items()}
  # One file per parameter (no OCDBT): the OCDBT writer's buffers pushed a conversion's
  # peak memory well past the checkpoint size (tools/bench_forward.py measures it).
  checkpointer = ocp.StandardCheckpointer(use_ocdbt=False)
  checkpointer.save(os.path.join(directory, "params"), params)
  checkpointer.wait_until_finished()
  with open(os.path.join(directory, MODEL_CONFIG), "w", encoding="utf-8") as f:
    json.dump({"kind": _kind_of(config), "config": dataclasses.asdict(config)}, f, indent=2)
  return directory


def read_model(directory: str):
  directory = os.path.abspath(directory)
  config_path = os.path.join(directory, MODEL_CONFIG)
  config = config_from_json(read_json_object(config_path), config_path)
  if config.source and not os.path.isabs(config.source):
    config = _with_source(config, os.path.join(directory, config.source))
  abstract = _KINDS[_kind_of(config)][1](config)
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
