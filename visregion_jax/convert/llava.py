"""llava-hf checkpoints (LlavaForConditionalGeneration) <-> the NNX LVLM.

The three sub-models reuse their own tables (decoder, vision tower, projector); only
the key layout differs between checkpoints. Two layouts exist on disk: the one
transformers 5 writes (`language_model.model.*`, `language_model.lm_head.*`,
`vision_tower.*`, `multi_modal_projector.*`; older llava-hf files add
`vision_model.` below `vision_tower.`) and the in-memory module names some
checkpoints were saved with (`model.language_model.*`, `model.vision_tower.*`,
`model.multi_modal_projector.*`, `lm_head.*`). Both are read; the first is written.
"""

import json
import os
from typing import Optional

from visregion_jax.convert import hf_config, tensor_files, tokenizer
from visregion_jax.convert.mapping import IDENTITY, TRANSPOSE, Rule, Table
from visregion_jax.convert.params import (
  check_all_exported,
  check_no_extra,
  fill_params,
  hf_tensors,
  merge_params,
  model_params,
  prefixed,
  write_generation_config,
)
from visregion_jax.convert.tables import DECODER_TABLES
from visregion_jax.convert.vision_config import vision_config_from_hf, vision_config_to_hf
from visregion_jax.convert.vision_tables import VISION_TABLES
from visregion_jax.errors import VisRegionError
from visregion_jax.models.lvlm import LVLM, LVLMConfig, abstract_lvlm
from visregion_jax.models.projector import projector_depth
from visregion_jax.models.vision import FEATURE_STRATEGIES

LLAVA_PROJECTOR = Table(
    architecture="llava_projector", hf_class="", rules=(
        Rule("linear_1.weight", ("linears.0.kernel",), TRANSPOSE),
        Rule("linear_1.bias", ("linears.0.bias",), IDENTITY, when=lambda c: c.projector_bias),
        Rule("linear_2.weight", ("linears.1.kernel",), TRANSPOSE),
        Rule("linear_2.bias", ("linears.1.bias",), IDENTITY, when=lambda c: c.projector_bias),
    ))


class Layout:
  """Where each sub-model's keys live in one llava checkpoint."""

  def __init__(self, text, vision: str, projector: str):
    self.text, self.vision, self.projector = text, prefixed(vision), prefixed(projector)
    self.vision_prefix = vision

  def is_ignored(self, key: str, config: LVLMConfig) -> bool:
    """Weightless buffers (rotary inv_freq, position_ids) of either sub-model."""
    if key.startswith(self.vision_prefix):
      return VISION_TABLES[config.vision.kind].is_ignored(key[len(self.vision_prefix):])
    return DECODER_TABLES[config.text.architecture].is_ignored(key)


def _text_in_module_layout(key: str) -> str:
  return key if key == "lm_head.weight" else "model.language_model." + key[len("model."):]


WRITTEN_LAYOUT = Layout(prefixed("language_model."), "vision_tower.", "multi_modal_projector.")


def detect_layout(keys: set, where: str) -> Layout:
  if "language_model.model.embed_tokens.weight" in keys:
    text, outer = prefixed("language_model."), ""
  elif "model.language_model.embed_tokens.weight" in keys:
    text, outer = _text_in_module_layout, "model."
  else:
    raise VisRegionError(where, "expected llava weights (language_model.model.* or "
                         "model.language_model.* keys)")
  vision = outer + "vision_tower."
  if any(k.startswith(vision + "vision_model.") for k in keys):
    vision += "vision_model."
  return Layout(text, vision, outer + "multi_modal_projector.")


def lvlm_config_from_hf(d: dict, where: str, *, dtype: str, param_dtype: Optional[str],
                        source: str) -> LVLMConfig:
  for key in ("text_config", "vision_config"):
    if not isinstance(d.get(key), dict):
      raise VisRegionError(f"{where}: {key}", "expected a mapping")
  text_dict = {"model_type": "llama", **d["text_config"]}
  text_dict.setdefault("dtype", d.get("dtype") or d.get("torch_dtype") or "float32")
  text = hf_config.decoder_config_from_hf(text_dict, f"{where}: text_config", dtype=dtype,
                                          param_dtype=param_dtype, source=source)
  vision = vision_config_from_hf(d["vision_config"], f"{where}: vision_config", dtype=dtype,
                                 param_dtype=param_dtype or text.param_dtype)
  act = d.get("projector_hidden_act", "gelu")
  if act != "gelu":
    raise VisRegionError(f"{where}: projector_hidden_act", f"expected 'gelu', got {act!r}")
  layers = d.get("vision_feature_layer", -2)
  layers = tuple(layers) if isinstance(layers, list) else (layers,)
  depth = vision.num_layers + 1
  if not layers or not all(isinstance(i, int) and -depth <= i < depth for i in layers):
    raise VisRegionError(f"{where}: vision_feature_layer",
                         f"expected hidden-state indices in [-{depth}, {depth}), got {layers}")
  strategy = d.get("vision_feature_select_strategy", "default")
  if strategy not in FEATURE_STRATEGIES:
    raise VisRegionError(f"{where}: vision_feature_select_strategy",
                         f"expected one of {list(FEATURE_STRATEGIES)}, got {strategy!r}")
  token = d.get("image_token_id", d.get("image_token_index"))
  if not isinstance(token, int) or not 0 <= token < text.vocab_size:
    raise VisRegionError(f"{where}: image_token_index",
                         f"expected a token id below text vocab_size={text.vocab_size}, got {token!r}")
  return LVLMConfig(text=text, vision=vision, image_token_id=token, projector_type="mlp2x_gelu",
                    projector_bias=bool(d.get("multimodal_projector_bias", True)),
                    feature_layers=layers, feature_strategy=strategy,
                    hf_config_json=json.dumps(d, sort_keys=True))


def _sub_models(config: LVLMConfig, layout: Layout):
  """(table, sub-config, layer count, checkpoint key map, our path prefix) per sub-model."""
  return (
      (DECODER_TABLES[config.text.architecture], config.text, config.text.num_layers,
       layout.text, ("language_model",)),
      (VISION_TABLES[config.vision.kind], config.vision, config.vision.num_layers,
       layout.vision, ("vision_tower",)),
      (LLAVA_PROJECTOR, config, 0, layout.projector, ("projector",)),
  )


def from_llava_hf(path: str, d: dict, *, dtype: str, param_dtype: Optional[str]) -> LVLM:
  config_path = os.path.join(path, "config.json")
  config = lvlm_config_from_hf(d, config_path, dtype=dtype, param_dtype=param_dtype, source=path)
  source = tensor_files.open_hf_weights(path)
  layout = detect_layout(source.keys(), path)
  abstract = abstract_lvlm(config)
  values, expected = {}, set()
  for table, sub_config, layers, rename, prefix in _sub_models(config, layout):
    expanded = table.expand(sub_config, layers)
    expected |= {rename(k) for k, _, _ in expanded}
    values.update(fill_params(abstract, source, expanded, sub_config, param_dtype, rename, prefix))
  check_no_extra(source, expected, lambda key: layout.is_ignored(key, config))
  return merge_params(abstract, values)


def lvlm_config_to_hf(config: LVLMConfig) -> dict:
  if projector_depth(config.projector_type) != 2:
    raise VisRegionError("projector_type", f"llava-hf stores an mlp2x_gelu projector, "
                         f"not {config.projector_type!r}")
  d = json.loads(config.hf_config_json)
  d.pop("torch_dtype", None)
  layers = list(config.feature_layers)
  d.update(
      architectures=["LlavaForConditionalGeneration"], model_type="llava",
      text_config=hf_config.decoder_config_to_hf(config.text),
      vision_config=vision_config_to_hf(config.vision),
      image_token_index=config.image_token_id, image_seq_length=config.num_image_tokens,
      projector_hidden_act="gelu", multimodal_projector_bias=config.projector_bias,
      vision_feature_layer=layers[0] if len(layers) == 1 else layers,
      vision_feature_select_strategy=config.feature_strategy,
      tie_word_embeddings=config.text.tie_word_embeddings, dtype=config.text.param_dtype)
  d.pop("image_token_id", None)
  return d


def to_llava_hf(model: LVLM, out_dir: str, *, max_shard_bytes: int) -> str:
  config = model.config.replace(text=model.config.text.replace(num_layers=len(model.layers)))
  params = model_params(model)
  names, sizes, generators, used = [], [], [], set()
  for table, sub_config, layers, rename, prefix in _sub_models(config, WRITTEN_LAYOUT):
    n, s, g, u = hf_tensors(params, table, sub_config, layers, rename, prefix)
    names += n
    sizes += s
    generators.append(g)
    used |= u
  check_all_exported(params, used)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(lvlm_config_to_hf(config), f, indent=2, sort_keys=True)
  write_generation_config(out_dir, config.text)
  tensor_files.write_safetensors(out_dir, (t for g in generators for t in g), sizes, max_shard_bytes)
  tokenizer.save_tokenizer(config.source, out_dir)
  return out_dir
