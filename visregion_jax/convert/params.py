"""The machinery every HF format shares: fill an abstract model from a tensor source
through a name table, and produce HF tensors lazily from our parameters.

Import fills an abstract (shape-only) model tensor by tensor, so the only full copy
of the weights ever held is the model itself. Export produces HF tensors lazily,
one shard at a time. `decoder.py`, `llava.py`, `vision.py` and `llava_original.py`
are siblings built on this module.
"""

import json
import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from visregion_jax.convert.mapping import Table, format_path
from visregion_jax.errors import VisRegionError
from visregion_jax.models.config import DecoderConfig


def default_compute_dtype() -> str:
  """bf16 where the hardware has fast bf16 matmuls, fp32 on CPU (exact parity)."""
  return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def same_name(hf_key: str) -> str:
  return hf_key


def prefixed(prefix: str) -> Callable[[str], str]:
  return lambda hf_key: prefix + hf_key


def fill_params(abstract: nnx.Module, source, expanded: list, config,
                param_dtype: Optional[str], rename: Callable[[str], str] = same_name,
                our_prefix: tuple = ()) -> dict:
  """Reads every tensor of `expanded` from `source`: {our path: jax array}.

  `rename` maps a table's HF name to the checkpoint's key (a sub-model inside an LVLM
  checkpoint has a prefix, or several). Shapes are checked against the abstract model
  before a tensor is converted, and every failure names the file and HF key.
  """
  abstract_params = dict(nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
  values = {}
  for hf_key, ours, transform in expanded:
    key = rename(hf_key)
    paths = [our_prefix + p for p in ours]
    if key not in source.keys():
      raise VisRegionError(f"{source.name}: {key}", "tensor missing from the checkpoint")
    targets = [abstract_params[p] for p in paths]
    want = transform.hf_shape([t.shape for t in targets], config)
    got = source.shape(key)
    if tuple(got) != tuple(want):
      raise VisRegionError(f"{source.where(key)}: {key}", f"expected shape {list(want)}, got {list(got)}")
    array = source.get(key)
    if not jnp.issubdtype(array.dtype, jnp.floating):
      raise VisRegionError(f"{source.where(key)}: {key}", f"expected a floating-point tensor, got {array.dtype}")
    for path, ours_array in zip(paths, transform.to_ours(array, config)):
      dtype = jnp.dtype(param_dtype) if param_dtype else ours_array.dtype
      values[path] = jnp.asarray(ours_array, dtype=dtype)
  return values


def check_no_extra(source, expected_keys: set, ignored) -> None:
  extra = sorted(k for k in source.keys() - expected_keys if not ignored(k))
  if extra:
    raise VisRegionError(f"{source.where(extra[0])}: {extra[0]}",
                         f"unexpected tensor ({len(extra)} unexpected in all) for this config")


def merge_params(abstract: nnx.Module, values: dict) -> nnx.Module:
  """The abstract module with every parameter replaced by its loaded value."""
  graphdef, state = nnx.split(abstract)
  flat = []
  for path, variable in nnx.to_flat_state(state):
    if path in values:
      variable = variable.replace(values.pop(path))
    elif isinstance(variable, nnx.Param):
      raise VisRegionError(format_path(path), "no tensor was loaded for this parameter")
    flat.append((path, variable))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def hf_shapes(params: dict, table: Table, config, num_layers: int,
              rename: Callable[[str], str] = same_name, our_prefix: tuple = ()) -> list:
  """[(HF name, HF shape, dtype)] of what `hf_tensors` yields, in its order, computed
  without producing a tensor (a writer that needs every header first, such as GGUF's)."""
  out = []
  for hf_key, ours, transform in table.expand(config, num_layers):
    arrays = [params[our_prefix + p] for p in ours]
    out.append((rename(hf_key), tuple(transform.hf_shape([a.shape for a in arrays], config)), arrays[0].dtype))
  return out


def hf_tensors(params: dict, table: Table, config, num_layers: int,
               rename: Callable[[str], str] = same_name, our_prefix: tuple = ()) -> tuple:
  """(names, byte sizes, lazy tensor generator, our paths used) for export.

  The generator yields (name, numpy array) one at a time, so export never holds
  more than the shard being written.
  """
  expanded = table.expand(config, num_layers)
  shapes = hf_shapes(params, table, config, num_layers, rename, our_prefix)
  names = [name for name, _, _ in shapes]
  sizes = [int(np.prod(shape)) * dtype.itemsize for _, shape, dtype in shapes]

  def generate():
    for name, (_, ours, transform) in zip(names, expanded):
      arrays = tuple(np.asarray(jax.device_get(params[our_prefix + p])) for p in ours)
      yield name, transform.to_hf(arrays, config)

  used = {our_prefix + p for _, ours, _ in expanded for p in ours}
  return names, sizes, generate(), used


def model_params(model: nnx.Module) -> dict:
  """{path: array} of every parameter. LoRA factors are parameters too: a model that
  carries them must be merged first (`TrainingPlan.merge_lora`), or export refuses it."""
  return {path: v.get_value() for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}



def check_all_exported(params: dict, used: set) -> None:
  left = sorted(format_path(p) for p in set(params) - used)
  if left:
    raise VisRegionError(left[0], "parameter has no HF name (LoRA factors: merge them first with "
                         "TrainingPlan.merge_lora)")


def write_generation_config(out_dir: str, config: DecoderConfig) -> None:
  eos = list(config.eos_token_ids)
  generation = {"bos_token_id": config.bos_token_id,
                "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
                "pad_token_id": config.pad_token_id}
  with open(os.path.join(out_dir, "generation_config.json"), "w", encoding="utf-8") as f:
    json.dump({k: v for k, v in generation.items() if v is not None}, f, indent=2)
