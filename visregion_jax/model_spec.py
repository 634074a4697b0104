"""One description of the model a training config asks for, before any weight is read.

`model.init_from` is an llava-hf directory (an LVLM as is) or a decoder (HF directory,
GGUF, alias) that is joined with the vision tower of `model.vision_tower` and a new
projector; without local weights, `model.architecture` names a preset of the paper's
models. Building (train/builder.py) and the dry run both derive their configs here,
so the two can never describe different models.
"""

import os

from visregion_jax.convert import hf_config, llava, tensor_files
from visregion_jax.convert.gguf_file import GGUFSource, resolve_model_path
from visregion_jax.convert.vision_config import vision_config_from_hf
from visregion_jax.errors import VisRegionError
from visregion_jax.models.config import DecoderConfig
from visregion_jax.models.lvlm import LVLMConfig
from visregion_jax.models.vision import VisionConfig

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

# name -> an llava-hf config ("llava") or a decoder + vision tower that the builder joins.
PRESETS = {
    "llava-1.5-7b": {"llava": _llava_15(_vicuna(4096, 11008, 32, 32))},
    "llava-1.5-13b": {"llava": _llava_15(_vicuna(5120, 13824, 40, 40))},
    "bunny-llama3-8b": {"decoder": LLAMA_3_8B, "vision": SIGLIP_SO400M_14_384},
    "bunny-phi3-mini": {"decoder": PHI_3_MINI_4K, "vision": SIGLIP_SO400M_14_384},
}


def _read_local(m) -> tuple:
  """(description, {"llava": d} or {"decoder": d, "vision": d or None}) from local files
  (config.json, or a GGUF file's metadata), or None when init_from is not local."""
  path = resolve_model_path(str(m.get("init_from") or ""))
  config_path = os.path.join(path, "config.json")
  if path.endswith(".gguf") and os.path.isfile(path):
    d, config_path = GGUFSource(path).config, f"{path} (metadata)"
  elif path and os.path.isfile(config_path):
    d = tensor_files.read_json_object(config_path)
  else:
    return None
  if d.get("model_type") == "llava":
    return path, {"llava": d, "where": config_path}
  tower = str(m.get("vision_tower") or "")
  tower_config = os.path.join(tower, "config.json")
  vision = tensor_files.read_json_object(tower_config) if tower else None
  return path, {"decoder": d, "vision": vision, "where": config_path, "vision_where": tower_config}


def describe(config) -> tuple:
  """(where the shapes come from, the config dicts): local config.json first, then the preset."""
  m = config.model
  local = _read_local(m)
  if local is not None:
    return local
  name = m.get("architecture", "")
  if name in PRESETS:
    return f"preset {name}", PRESETS[name]
  raise VisRegionError("model.architecture", f"expected one of {sorted(PRESETS)} when "
                       f"model.init_from ({m.get('init_from')!r}) is not a local directory with "
                       f"config.json or a .gguf file, got {name!r}")


def model_config(spec: dict, m, dtype: str):
  """The LVLMConfig (or DecoderConfig, for a decoder without a vision tower) training builds."""
  where = spec.get("where", "model.architecture")
  if "llava" in spec:
    return llava.lvlm_config_from_hf(spec["llava"], where, dtype=dtype, param_dtype=None, source="")
  text = hf_config.decoder_config_from_hf(spec["decoder"], where, dtype=dtype)
  if spec.get("vision") is None:
    return text
  vision = vision_config_from_hf(spec["vision"], spec.get("vision_where", where), dtype=dtype)
  return joined_lvlm_config(text, vision, m)


def joined_lvlm_config(text: DecoderConfig, vision: VisionConfig, m) -> LVLMConfig:
  """A decoder + tower joined: one more vocabulary row (the mean row) for `<image>`,
  whose id is the last; projector and feature selection from the `model` section."""
  text = text.replace(vocab_size=text.vocab_size + 1)
  return LVLMConfig(text=text, vision=vision, image_token_id=text.vocab_size - 1,
                    projector_type=m.projector_type, feature_layers=tuple(m.feature_layers),
                    feature_strategy=m.feature_strategy)
