"""`load_model(path)`: every model source the library reads, behind one call.

Accepted, in the order they are recognised:
  - a training workdir (`checkpoints/` + `config.json`): the base rebuilt from the
    run's config, its latest trained parameters restored, LoRA merged;
  - a JAX model checkpoint directory (`convert from-hf` output);
  - an original LLaVA / Bunny checkpoint (detected from its config.json, or implied by
    `vision_tower`, `adapter` or `image_token_id`), with a PEFT adapter merged;
  - anything `convert.from_hf` reads: an HF directory (decoder or llava-hf), a `.gguf`
    file, or `smollm2-135m-instruct`.
"""

import os
from typing import Optional

from visregion_jax.convert import hf_config, jax_checkpoint, llava, tensor_files
from visregion_jax.convert.gguf_file import resolve_model_path
from visregion_jax.convert.hf import from_hf
from visregion_jax.convert.llava_original import from_llava_original, is_llava_original
from visregion_jax.convert.llava_original_config import text_config_dict
from visregion_jax.models.lvlm import LVLMConfig
from visregion_jax.train.trained import is_training_workdir, load_trained


def load_model(path: str, *, dtype: Optional[str] = None, param_dtype: Optional[str] = None,
               vision_tower: Optional[str] = None, adapter: Optional[str] = None,
               image_token_id: Optional[int] = None, template: Optional[str] = None):
  """The NNX model (Decoder or LVLM) stored at `path`; see the module docstring.
  `template` names an original checkpoint's conversation format (templates.py;
  default vicuna_v1), which its processor's chat template spells out."""
  path = str(path)
  if os.path.isdir(path) and is_training_workdir(path):
    return load_trained(path)
  if jax_checkpoint.is_model_checkpoint(path):
    return jax_checkpoint.read_model(path)
  original = dict(vision_tower=vision_tower, adapter=adapter, image_token_id=image_token_id, template=template)
  if any(v is not None for v in original.values()) or is_llava_original(path):
    if template is None:
      original.pop("template")
    return from_llava_original(path, dtype=dtype, param_dtype=param_dtype, **original)
  return from_hf(path, dtype=dtype, param_dtype=param_dtype)


def peek_model(path: str, **original) -> tuple:
  """("decoder" | "lvlm", the decoder's DecoderConfig or None) of what `load_model(path,
  **original)` returns, read from config files alone, so a command can refuse a source
  before loading any weight. The config is None for a GGUF file (its header is checked
  when it is opened) and for LoRA adapters on a plain decoder."""
  path = str(path)
  if os.path.isdir(path) and is_training_workdir(path):
    m = tensor_files.read_json_object(os.path.join(path, "config.json")).get("model") or {}
    kind, text = peek_model(str(m.get("init_from") or ""))
    return ("lvlm" if m.get("vision_tower") else kind), text
  if jax_checkpoint.is_model_checkpoint(path):
    where = os.path.join(path, jax_checkpoint.MODEL_CONFIG)
    config = jax_checkpoint.config_from_json(tensor_files.read_json_object(where), where)
    return ("lvlm", config.text) if isinstance(config, LVLMConfig) else ("decoder", config)
  if any(v is not None for v in original.values()) or is_llava_original(path):
    if not is_llava_original(path):
      return "lvlm", None
    where = os.path.join(path, "config.json")
    d = text_config_dict(tensor_files.read_json_object(where), where)
    return "lvlm", hf_config.decoder_config_from_hf(d, where, source=path)
  config_path = os.path.join(path, "config.json")
  if not os.path.isfile(config_path):
    resolve_model_path(path)  # an alias whose package is missing is reported here
    return "decoder", None
  d = tensor_files.read_json_object(config_path)
  if d.get("model_type") == "llava":
    return "lvlm", llava.lvlm_config_from_hf(d, config_path, dtype="float32", param_dtype=None, source=path).text
  return "decoder", hf_config.decoder_config_from_hf(d, config_path, source=path)
