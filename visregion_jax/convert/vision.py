"""from_hf / to_hf for a standalone HF vision model directory (CLIPVisionModel, SiglipVisionModel).

transformers 5 saves these towers' tensors without a prefix, transformers 4 and the Hub
checkpoints under "vision_model."; both are read. Export writes "vision_model.", which
both generations of transformers load.
"""

import json
import os
from typing import Optional

from visregion_jax.convert import tensor_files
from visregion_jax.convert.params import (
  check_all_exported,
  check_no_extra,
  default_compute_dtype,
  fill_params,
  hf_tensors,
  merge_params,
  model_params,
  prefixed,
)
from visregion_jax.convert.vision_config import HF_CLASSES, vision_config_from_hf, vision_config_to_hf
from visregion_jax.convert.vision_tables import VISION_TABLES
from visregion_jax.models.vision import VisionTower, abstract_vision_tower

PREFIX = "vision_model."


def vision_tower_from_hf(directory: str, *, dtype: Optional[str] = None,
                         param_dtype: Optional[str] = None) -> VisionTower:
  """`dtype` is the compute dtype (default: fp32 on CPU, bf16 on accelerators);
  `param_dtype` casts the weights (default: keep the stored dtype)."""
  config_path = os.path.join(directory, "config.json")
  config = vision_config_from_hf(tensor_files.read_json_object(config_path), config_path,
                                 dtype=dtype or default_compute_dtype(), param_dtype=param_dtype)
  source = tensor_files.open_hf_weights(directory)
  prefix = PREFIX if any(k.startswith(PREFIX) for k in source.keys()) else ""
  table = VISION_TABLES[config.kind]
  expanded = table.expand(config, config.num_layers)
  check_no_extra(source, {prefix + k for k, _, _ in expanded},
                 lambda k: k.startswith(prefix) and table.is_ignored(k[len(prefix):]))
  abstract = abstract_vision_tower(config)
  return merge_params(abstract, fill_params(abstract, source, expanded, config, param_dtype,
                                            prefixed(prefix)))


def vision_tower_to_hf(tower: VisionTower, out_dir: str, *,
                       max_shard_bytes: int = tensor_files.DEFAULT_MAX_SHARD_BYTES) -> str:
  """Writes config.json and safetensors (dtype kept) that AutoModel loads as the same tower."""
  config = tower.config.replace(num_layers=len(tower.layers))
  os.makedirs(out_dir, exist_ok=True)
  params = model_params(tower)
  names, sizes, tensors, used = hf_tensors(params, VISION_TABLES[config.kind], config,
                                           config.num_layers, prefixed(PREFIX))
  check_all_exported(params, used)
  dtypes = {str(v.dtype) for v in params.values()}
  config = config.replace(param_dtype=dtypes.pop() if len(dtypes) == 1 else config.param_dtype)
  hf_config = vision_config_to_hf(config)
  hf_config["architectures"] = [HF_CLASSES[config.kind]]
  with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  tensor_files.write_safetensors(out_dir, tensors, sizes, max_shard_bytes)
  return out_dir
