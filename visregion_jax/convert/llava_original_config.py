"""The original LLaVA / Bunny `config.json` (decoder fields + `mm_*` keys) -> LVLM settings.

LLaVA's LlavaConfig and Bunny's configs subclass the decoder's LlamaConfig / Phi3Config,
so the decoder fields sit at the top level next to the multimodal keys; the vision
tower's own config is not there (the code loads it from `mm_vision_tower`, a Hub name
we never download), so it is read from the vision directory the caller passes.
"""

import os
from typing import Optional

from visregion_jax.convert.tensor_files import read_json_object
from visregion_jax.convert.vision_config import vision_config_from_hf
from visregion_jax.errors import VisRegionError
from visregion_jax.models.projector import projector_depth
from visregion_jax.models.vision import VisionConfig

# model_type -> (our decoder architecture, whose code defines the multimodal keys)
ORIGINAL_MODEL_TYPES = {"llava_llama": ("llama", "llava"), "bunny-llama": ("llama", "bunny"),
                        "bunny-phi3": ("phi3", "bunny")}
# Training bookkeeping of the original code: no meaning for the decoder we export.
_TRAINING_KEYS = ("architectures", "auto_map", "_name_or_path", "image_aspect_ratio",
                  "image_grid_pinpoints", "tokenizer_model_max_length", "tokenizer_padding_side",
                  "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "unfreeze_mm_vision_tower",
                  "unfreeze_vision_tower", "use_mm_proj", "use_s2", "s2_scales", "freeze_backbone")
_SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}  # LLaVA's names -> ours
# A full CLIPModel / SiglipModel directory (what mm_vision_tower names on the Hub) nests the tower's config.
_FULL_MODEL_TYPES = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}


def original_model_type(d: dict) -> Optional[tuple]:
  """(architecture, "llava" | "bunny") for an original config, else None."""
  return ORIGINAL_MODEL_TYPES.get(d.get("model_type")) if isinstance(d, dict) else None


def text_config_dict(d: dict, where: str) -> dict:
  """The decoder's HF config: the top-level fields, under the decoder's own model_type."""
  architecture, _ = original_model_type(d)
  if d.get("use_s2"):
    raise VisRegionError(f"{where}: use_s2", "expected false (multi-scale S2 towers are not supported)")
  if d.get("mm_patch_merge_type", "flat") != "flat":
    raise VisRegionError(f"{where}: mm_patch_merge_type", f"expected 'flat' (LLaVA-1.5; LLaVA-NeXT "
                         f"tiling is not supported), got {d['mm_patch_merge_type']!r}")
  text = {k: v for k, v in d.items() if not k.startswith("mm_") and k not in _TRAINING_KEYS}
  text["model_type"] = architecture
  return text


def projector_type(d: dict, where: str) -> str:
  value = str(d.get("mm_projector_type", "linear"))  # LLaVA's default; Bunny always writes it
  try:
    projector_depth(value)
  except VisRegionError as e:
    raise VisRegionError(f"{where}: mm_projector_type", e.expected) from None
  return value


def vision_directory(vision_tower: Optional[str], d: dict, where: str) -> str:
  """The caller's vision directory, else mm_vision_tower when it is a local directory."""
  if vision_tower is not None:
    return vision_tower
  named = d.get("mm_vision_tower")
  if isinstance(named, str) and os.path.isdir(named):
    return named
  raise VisRegionError(f"{where}: mm_vision_tower", f"expected the vision tower's HF directory "
                       f"({named!r} is not a local one): pass vision_tower= / --vision-tower")


def vision_config(directory: str, *, dtype: str, param_dtype: str) -> VisionConfig:
  """The tower's config from a CLIP/SigLIP vision model directory or a full CLIP/SigLIP one."""
  path = os.path.join(directory, "config.json")
  d, where = read_json_object(path), path
  if d.get("model_type") in _FULL_MODEL_TYPES and isinstance(d.get("vision_config"), dict):
    d = {"model_type": _FULL_MODEL_TYPES[d["model_type"]], **d["vision_config"]}
    where = f"{path}: vision_config"
  return vision_config_from_hf(d, where, dtype=dtype, param_dtype=param_dtype)


def feature_selection(d: dict, flavor: str, vision: VisionConfig, where: str) -> tuple:
  """(vision hidden-state index, our strategy) the original code feeds the projector.

  Bunny's towers hard-code it and ignore mm_vision_select_*: its SigLIP tower drops the
  last encoder layer (and the head) and uses the last remaining hidden state with every
  token, i.e. hidden state -2 of the full tower, all tokens (later Bunny code indexes
  hidden_states[-2] directly); its CLIP tower takes hidden state -2 without the class
  token (bunny/model/multimodal_encoder/{siglip,clip}). LLaVA reads
  mm_vision_select_layer (-2 by default) and mm_vision_select_feature ("patch" drops
  the class token, "cls_patch" keeps it).
  """
  if flavor == "bunny":
    return -2, "full" if vision.kind == "siglip" else "default"
  layer, depth = d.get("mm_vision_select_layer", -2), vision.num_layers + 1
  if isinstance(layer, bool) or not isinstance(layer, int) or not -depth <= layer < depth:
    raise VisRegionError(f"{where}: mm_vision_select_layer",
                         f"expected a hidden-state index in [-{depth}, {depth}), got {layer!r}")
  feature = d.get("mm_vision_select_feature", "patch")
  if feature not in _SELECT_FEATURE:
    raise VisRegionError(f"{where}: mm_vision_select_feature",
                         f"expected one of {list(_SELECT_FEATURE)}, got {feature!r}")
  return layer, _SELECT_FEATURE[feature]


def check_mm_hidden_size(d: dict, vision: VisionConfig, where: str, vision_dir: str) -> None:
  hidden = d.get("mm_hidden_size")
  if hidden is not None and hidden != vision.hidden_size:
    raise VisRegionError(f"{where}: mm_hidden_size", f"expected the vision tower's hidden_size "
                         f"{vision.hidden_size} ({vision_dir}), got {hidden!r}")
