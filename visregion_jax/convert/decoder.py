"""Decoders (Llama, Phi-3) from and to HF: a name table walked over a streaming source."""

import json
import os
from typing import Optional

from visregion_jax.convert import hf_config, tensor_files, tokenizer
from visregion_jax.convert.gguf_file import GGUFSource, resolve_model_path
from visregion_jax.convert.params import (
  check_all_exported,
  check_no_extra,
  default_compute_dtype,
  fill_params,
  hf_tensors,
  merge_params,
  model_params,
  write_generation_config,
)
from visregion_jax.convert.tables import DECODER_TABLES
from visregion_jax.errors import VisRegionError
from visregion_jax.models import rope
from visregion_jax.models.llama import Decoder, abstract_decoder


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
    config = hf_config.decoder_config_from_hf(
        source.config, f"{path} (metadata)", dtype=dtype, param_dtype=param_dtype, source=path)
    source.check_rope_freqs(rope.frequency_factors(config))
    return source, config
  config_path = os.path.join(path, "config.json")
  config = hf_config.decoder_config_from_hf(
      tensor_files.read_json_object(config_path), config_path, dtype=dtype, param_dtype=param_dtype, source=path)
  return tensor_files.open_hf_weights(path), config


def decoder_from_hf(path: str, *, dtype: Optional[str] = None, param_dtype: Optional[str] = None) -> Decoder:
  """A decoder HF directory or `.gguf` file -> Decoder."""
  source, config = open_decoder_source(path, dtype, param_dtype)
  table = DECODER_TABLES[config.architecture]
  expanded = table.expand(config, config.num_layers)
  check_no_extra(source, {k for k, _, _ in expanded}, table.is_ignored)
  abstract = abstract_decoder(config)
  return merge_params(abstract, fill_params(abstract, source, expanded, config, param_dtype))


def decoder_to_hf(model: Decoder, out_dir: str, *, max_shard_bytes: int) -> str:
  """config.json, generation_config.json, safetensors and tokenizer of a decoder."""
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
