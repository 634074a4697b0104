"""from_hf / to_hf for decoders: walk a name table over a streaming tensor source.

Import fills an abstract (shape-only) model tensor by tensor, so the only full copy
of the weights ever held is the model itself. Export produces HF tensors lazily,
one shard at a time.
"""

import json
import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from visregion_jax.convert import hf_config, tensor_files, tokenizer
from visregion_jax.convert.gguf_file import GGUFSource, resolve_model_path
from visregion_jax.convert.mapping import Table, format_path
from visregion_jax.convert.tables import DECODER_TABLES
from visregion_jax.errors import VisRegionError
from visregion_jax.models.config import DecoderConfig
from visregion_jax.models.llama import Decoder, abstract_decoder
from visregion_jax.models.lora import lora_linears


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
    for path, array in zip(paths, transform.to_ours(array, config)):
      dtype = jnp.dtype(param_dtype) if param_dtype else array.dtype
      values[path] = jnp.asarray(array, dtype=dtype)
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


def open_decoder_source(path: str, dtype: Optional[str], param_dtype: Optional[str]):
  """(tensor source, DecoderConfig) of an HF directory or GGUF file."""
  path = resolve_model_path(path)
  if not os.path.exists(path):
    raise VisRegionError(path, "no such file or directory (expected an HF model directory or a .gguf file)")
  dtype = dtype or default_compute_dtype()
  if os.path.isfile(path):
    if not path.endswith(".gguf"):
      raise VisRegionError(path, "expected an HF model directory or a .gguf file")
    source = GGUFSource(path)
    return source, hf_config.decoder_config_from_hf(
        source.config, f"{path} (metadata)", dtype=dtype, param_dtype=param_dtype, source=path)
  config_path = os.path.join(path, "config.json")
  config = hf_config.decoder_config_from_hf(
      tensor_files.read_json_object(config_path), config_path, dtype=dtype, param_dtype=param_dtype, source=path)
  return tensor_files.open_hf_weights(path), config


def from_hf(path: str, *, dtype: Optional[str] = None, param_dtype: Optional[str] = None):
  """An HF model directory, `.gguf` file or `smollm2-135m-instruct` -> an NNX model.

  A llava config gives an LVLM, anything else a Decoder. `dtype` is the compute dtype
  (default: fp32 on CPU, bf16 on accelerators); `param_dtype` casts the weights
  (default: keep the stored dtype).
  """
  config_path = os.path.join(str(path), "config.json")
  if os.path.isdir(path) and os.path.isfile(config_path):
    d = tensor_files.read_json(config_path)
    if isinstance(d, dict) and d.get("model_type") == "llava":
      from visregion_jax.convert import llava  # pylint: disable=import-outside-toplevel
      return llava.from_llava_hf(path, d, dtype=dtype or default_compute_dtype(),
                                 param_dtype=param_dtype)
  source, config = open_decoder_source(path, dtype, param_dtype)
  table = DECODER_TABLES[config.architecture]
  expanded = table.expand(config, config.num_layers)
  check_no_extra(source, {k for k, _, _ in expanded}, table.is_ignored)
  abstract = abstract_decoder(config)
  return merge_params(abstract, fill_params(abstract, source, expanded, config, param_dtype))


def hf_tensors(params: dict, table: Table, config, num_layers: int,
               rename: Callable[[str], str] = same_name, our_prefix: tuple = ()) -> tuple:
  """(names, byte sizes, lazy tensor generator, our paths used) for export.

  The generator yields (name, numpy array) one at a time, so export never holds
  more than the shard being written.
  """
  expanded = table.expand(config, num_layers)
  names, sizes = [], []
  for hf_key, ours, transform in expanded:
    arrays = [params[our_prefix + p] for p in ours]
    shape = transform.hf_shape([a.shape for a in arrays], config)
    names.append(rename(hf_key))
    sizes.append(int(np.prod(shape)) * arrays[0].dtype.itemsize)

  def generate():
    for name, (_, ours, transform) in zip(names, expanded):
      arrays = tuple(np.asarray(jax.device_get(params[our_prefix + p])) for p in ours)
      yield name, transform.to_hf(arrays, config)

  used = {our_prefix + p for _, ours, _ in expanded for p in ours}
  return names, sizes, generate(), used


def model_params(model: nnx.Module) -> dict:
  """{path: array} of the base parameters, LoRA factors merged into their kernels."""
  params = {path: v.get_value() for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
            if not isinstance(v, nnx.LoRAParam)}
  for path, dense in lora_linears(model):
    params[tuple(path) + ("kernel",)] = dense.merged_kernel()
  return params


def check_all_exported(params: dict, used: set) -> None:
  left = sorted(format_path(p) for p in set(params) - used)
  if left:
    raise VisRegionError(left[0], "parameter has no HF name (merge LoRA before export)")


def write_generation_config(out_dir: str, config: DecoderConfig) -> None:
  eos = list(config.eos_token_ids)
  generation = {"bos_token_id": config.bos_token_id,
                "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
                "pad_token_id": config.pad_token_id}
  with open(os.path.join(out_dir, "generation_config.json"), "w", encoding="utf-8") as f:
    json.dump({k: v for k, v in generation.items() if v is not None}, f, indent=2)


def to_hf(model, out_dir: str, *,
          max_shard_bytes: int = tensor_files.DEFAULT_MAX_SHARD_BYTES) -> str:
  """Writes config.json, safetensors (dtype kept) and the tokenizer, loadable by transformers.

  A Decoder becomes LlamaForCausalLM / Phi3ForCausalLM, an LVLM llava-hf.
  """
  if not isinstance(model, Decoder):
    from visregion_jax.convert import llava  # pylint: disable=import-outside-toplevel
    return llava.to_llava_hf(model, out_dir, max_shard_bytes=max_shard_bytes)
  config = model.config.replace(num_layers=len(model.layers))
  os.makedirs(out_dir, exist_ok=True)
  params = model_params(model)
  names, sizes, tensors, used = hf_tensors(params, DECODER_TABLES[config.architecture], config,
                                           config.num_layers)
  check_all_exported(params, used)
  dtypes = {str(v.dtype) for v in params.values()}
  config = config.replace(param_dtype=dtypes.pop() if len(dtypes) == 1 else config.param_dtype)
  with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf_config.decoder_config_to_hf(config), f, indent=2, sort_keys=True)
  write_generation_config(out_dir, config)
  tensor_files.write_safetensors(out_dir, tensors, sizes, max_shard_bytes)
  tokenizer.save_tokenizer(config.source, out_dir)
  return out_dir
