"""HF vision `config.json` (CLIPVisionConfig / SiglipVisionConfig) <-> VisionConfig.

LLaVA checkpoints often store a sparse `vision_config` holding only the values that
differ from transformers' defaults, so a missing key takes the default of the
installed transformers' config class, never a guess.
"""

import json
from typing import Optional

from visregion_jax.convert.config_fields import positive_float, positive_int, stored_dtype
from visregion_jax.errors import VisRegionError
from visregion_jax.models.vision import ACTIVATIONS, VisionConfig

MODEL_TYPES = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}
HF_CLASSES = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel"}
_HF_MODEL_TYPES = {kind: model_type for model_type, kind in MODEL_TYPES.items()}

# transformers 5.24's CLIPVisionConfig / SiglipVisionConfig defaults.
_DEFAULTS = {
    "clip": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
             "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
             "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
    "siglip": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
               "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 16,
               "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "vision_use_head": True},
}
# Keys we own on export: every one is rewritten from VisionConfig.
_OWNED = ("torch_dtype", "dtype")


def vision_config_from_hf(d: dict, where: str, *, dtype: str = "float32",
                          param_dtype: Optional[str] = None) -> VisionConfig:
  """Validates an HF vision config dict (a standalone config.json or LLaVA's vision_config)."""
  if not isinstance(d, dict):
    raise VisRegionError(where, "expected a JSON object")
  model_type = d.get("model_type")
  if model_type not in MODEL_TYPES:
    raise VisRegionError(f"{where}: model_type",
                         f"expected one of {sorted(MODEL_TYPES)}, got {model_type!r}")
  kind = MODEL_TYPES[model_type]
  full = {**_DEFAULTS[kind], **d}
  hidden = positive_int(full, "hidden_size", where)
  heads = positive_int(full, "num_attention_heads", where)
  if hidden % heads:
    raise VisRegionError(f"{where}: num_attention_heads",
                         f"expected a divisor of hidden_size={hidden}, got {heads}")
  image_size = positive_int(full, "image_size", where)
  patch_size = positive_int(full, "patch_size", where)
  if patch_size > image_size:
    raise VisRegionError(f"{where}: patch_size",
                         f"expected at most image_size={image_size}, got {patch_size}")
  act = full["hidden_act"]
  if act not in ACTIVATIONS:
    raise VisRegionError(f"{where}: hidden_act",
                         f"expected one of {sorted(ACTIVATIONS)}, got {act!r}")
  eps = positive_float(full, "layer_norm_eps", where)
  use_head = full.get("vision_use_head", False) if kind == "siglip" else False
  if not isinstance(use_head, bool):
    raise VisRegionError(f"{where}: vision_use_head", f"expected true or false, got {use_head!r}")
  stored = stored_dtype(d, where)
  return VisionConfig(
      kind=kind,
      hidden_size=hidden,
      intermediate_size=positive_int(full, "intermediate_size", where),
      num_layers=positive_int(full, "num_hidden_layers", where),
      num_heads=heads,
      image_size=image_size,
      patch_size=patch_size,
      num_channels=positive_int(full, "num_channels", where),
      layer_norm_eps=eps,
      hidden_act=act,
      use_head=use_head,
      dtype=dtype,
      param_dtype=param_dtype or stored,
      hf_config_json=json.dumps(d, sort_keys=True),
  )


def vision_config_to_hf(config: VisionConfig) -> dict:
  """The vision config transformers needs to rebuild the tower we export."""
  d = {k: v for k, v in json.loads(config.hf_config_json).items() if k not in _OWNED}
  d.update(
      model_type=_HF_MODEL_TYPES[config.kind],
      hidden_size=config.hidden_size,
      intermediate_size=config.intermediate_size,
      num_hidden_layers=config.num_layers,
      num_attention_heads=config.num_heads,
      image_size=config.image_size,
      patch_size=config.patch_size,
      num_channels=config.num_channels,
      layer_norm_eps=config.layer_norm_eps,
      hidden_act=config.hidden_act,
      dtype=config.param_dtype,
  )
  if config.kind == "siglip":
    d["vision_use_head"] = config.use_head
  return d
