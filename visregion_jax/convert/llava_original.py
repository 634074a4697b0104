"""The original LLaVA / Bunny training format -> the NNX LVLM (to_hf then writes llava-hf).

LLaVA's and Bunny's own code (not llava-hf) saves a decoder checkpoint with the
projector beside it: `model.*` / `lm_head.weight` as the decoder names them, and
`model.mm_projector.*`, an nn.Sequential (linears at even indices, GELU between) or, for
"linear", a bare nn.Linear. The vision tower is saved only when training unfroze it
(`model.vision_tower.vision_tower.*`); otherwise it comes from the vision directory
the caller passes. A LoRA run saves an adapter directory instead, merged by
`peft_adapter`; when the base is the plain decoder it was trained from, the adapter
directory's config.json (with the mm_* keys) describes the model, as LLaVA's
load_pretrained_model reads them.
"""

import atexit
import os
import shutil
import tempfile
from typing import Optional

from visregion_jax.convert import hf_config, tensor_files, tokenizer
from visregion_jax.convert.image_token import AddedRowSource, existing_image_token, tokenizer_with_image_token
from visregion_jax.convert.llava_original_config import (
  ORIGINAL_MODEL_TYPES,
  check_mm_hidden_size,
  feature_selection,
  original_model_type,
  projector_type,
  text_config_dict,
  vision_config,
  vision_directory,
)
from visregion_jax.convert.mapping import IDENTITY, TRANSPOSE, Rule, Table
from visregion_jax.convert.params import (
  check_no_extra,
  default_compute_dtype,
  fill_params,
  merge_params,
  prefixed,
  same_name,
)
from visregion_jax.convert.peft_adapter import LoraMergedSource
from visregion_jax.convert.processor import write_processor
from visregion_jax.convert.tables import DECODER_TABLES
from visregion_jax.convert.vision_tables import VISION_TABLES
from visregion_jax.data.from_config import image_processor_config
from visregion_jax.errors import VisRegionError
from visregion_jax.models.lvlm import LVLM, LVLMConfig, abstract_lvlm
from visregion_jax.models.projector import projector_depth

CHECKPOINT_TOWER = "model.vision_tower.vision_tower."  # LLaVA's tower wrapper -> CLIPVisionModel
TOWER_ROOT = "vision_model."


def is_llava_original(path: str) -> bool:
  """Whether `path` is a directory whose config.json is an original LLaVA / Bunny one."""
  config_path = os.path.join(str(path), "config.json")
  return os.path.isfile(config_path) and original_model_type(
      tensor_files.read_json(config_path)) is not None


def projector_table(kind: str) -> Table:
  """The original projector's names: `model.mm_projector.{0,2,...}`, or bare for "linear"."""
  names = (["model.mm_projector"] if kind == "linear" else
           [f"model.mm_projector.{2 * i}" for i in range(projector_depth(kind))])
  rules = []
  for i, name in enumerate(names):
    rules += [Rule(f"{name}.weight", (f"linears.{i}.kernel",), TRANSPOSE),
              Rule(f"{name}.bias", (f"linears.{i}.bias",), IDENTITY)]
  return Table(architecture=f"original_{kind}", hf_class="", rules=tuple(rules))


def _model_config(path: str, adapter: Optional[str]) -> tuple:
  """(config.json path, dict): the checkpoint's, or for LoRA on a plain decoder, the adapter's."""
  config_path = os.path.join(path, "config.json")
  d = tensor_files.read_json_object(config_path)
  adapter_config = os.path.join(adapter, "config.json") if adapter else ""
  if original_model_type(d) is None and adapter and os.path.isfile(adapter_config):
    from_adapter = tensor_files.read_json_object(adapter_config)
    if original_model_type(from_adapter) is not None:
      config_path, d = adapter_config, from_adapter
  if original_model_type(d) is None:
    raise VisRegionError(f"{config_path}: model_type", f"expected one of {sorted(ORIGINAL_MODEL_TYPES)} "
                         f"(the original LLaVA / Bunny format), got {d.get('model_type')!r}")
  return config_path, d


def _image_token(image_token_id, vocab_size: int, tokenizer_dir: str, where: str) -> tuple:
  """(token id, whether the vocabulary grows by one row for it)."""
  if image_token_id is None:
    existing = existing_image_token(tokenizer_dir)
    if existing is not None and existing < vocab_size:
      return existing, False
    return vocab_size, True
  if isinstance(image_token_id, bool) or not isinstance(image_token_id, int) or not (
      0 <= image_token_id < vocab_size):
    raise VisRegionError("image_token_id", f"expected a token id below vocab_size={vocab_size} "
                         f"({where}), got {image_token_id!r}")
  return image_token_id, False


def _tower_weights(source, vision_dir: str) -> tuple:
  """(tensor source, key prefix) of the vision tower: the checkpoint's own copy when
  training saved one, else the vision directory's."""
  if any(k.startswith(CHECKPOINT_TOWER) for k in source.keys()):
    tower, prefix = source, CHECKPOINT_TOWER
  else:
    tower, prefix = tensor_files.open_hf_weights(vision_dir), ""
  if any(k.startswith(prefix + TOWER_ROOT) for k in tower.keys()):
    prefix += TOWER_ROOT
  return tower, prefix


def _load(config: LVLMConfig, source, vision_dir: str, param_dtype: Optional[str]) -> LVLM:
  abstract = abstract_lvlm(config)
  text_table, vision_table = DECODER_TABLES[config.text.architecture], VISION_TABLES[config.vision.kind]
  tower, prefix = _tower_weights(source, vision_dir)
  parts = ((text_table, config.text, config.text.num_layers, source, same_name, ("language_model",)),
           (projector_table(config.projector_type), config, 0, source, same_name, ("projector",)),
           (vision_table, config.vision, config.vision.num_layers, tower, prefixed(prefix),
            ("vision_tower",)))
  values, expected = {}, {source: set(), tower: set()}
  for table, sub_config, layers, from_source, rename, ours in parts:
    expanded = table.expand(sub_config, layers)
    expected[from_source] |= {rename(k) for k, _, _ in expanded}
    values.update(fill_params(abstract, from_source, expanded, sub_config, param_dtype, rename, ours))
  tower_buffer = lambda k: k.startswith(prefix) and vision_table.is_ignored(k[len(prefix):])
  if tower is source:
    check_no_extra(source, expected[source], lambda k: text_table.is_ignored(k) or tower_buffer(k))
  else:  # a full CLIP / SigLIP directory also holds the text tower: only the vision root counts
    check_no_extra(source, expected[source], text_table.is_ignored)
    check_no_extra(tower, expected[tower], lambda k: not k.startswith(prefix) or tower_buffer(k))
  return merge_params(abstract, values)


def _processor_dir(tokenizer_dir: str, config: LVLMConfig, vision_dir: str, d: dict, template: str) -> str:
  """A directory, living as long as the process, with the converted model's processor:
  the tokenizer (with `<image>`), the tower's image processor after LLaVA's padding when
  the checkpoint trained with `image_aspect_ratio: pad`, and the chat template."""
  out = tempfile.mkdtemp(prefix="visregion_processor_")
  atexit.register(shutil.rmtree, out, ignore_errors=True)
  write_processor(out, tokenizer.load_tokenizer(tokenizer_dir), config,
                  image_processor_config(config.vision, vision_dir),
                  pad_to_square=d.get("image_aspect_ratio") == "pad", template=template)
  return out


def from_llava_original(path: str, *, vision_tower: Optional[str] = None,
                        adapter: Optional[str] = None, image_token_id: Optional[int] = None,
                        dtype: Optional[str] = None, param_dtype: Optional[str] = None,
                        template: str = "vicuna_v1") -> LVLM:
  """An original LLaVA-1.5 / Bunny checkpoint directory, plus a LoRA adapter -> an LVLM.

  `vision_tower` is the CLIP / SigLIP HF directory that mm_vision_tower names (default:
  mm_vision_tower itself when it is a local directory); nothing is downloaded.
  `adapter` is a PEFT LoRA directory, merged on import. `image_token_id` is the
  vocabulary id that marks image features; without it the tokenizer's `<image>` is
  used, or one is added (vocabulary + 1; see `image_token`). `dtype` is the compute
  dtype (default: fp32 on CPU, bf16 on accelerators); `param_dtype` casts the weights
  (default: keep the stored dtype). `template` is the conversation format the checkpoint
  was trained with (templates.py; LLaVA-1.5's `conv_vicuna_v1` and Bunny's `conv_bunny`
  are both "vicuna_v1"), which its export's chat template spells out.
  """
  path = str(path)
  adapter = str(adapter) if adapter is not None else None
  vision_tower = str(vision_tower) if vision_tower is not None else None
  dtype = dtype or default_compute_dtype()
  config_path, d = _model_config(path, adapter)
  _, flavor = original_model_type(d)
  source = tensor_files.open_hf_weights(path)
  if adapter is not None:
    source = LoraMergedSource(source, adapter)
  tokenizer_dir = next((p for p in (path, adapter) if p and tokenizer.has_tokenizer(p)), path)
  text = hf_config.decoder_config_from_hf(text_config_dict(d, config_path), config_path,
                                          dtype=dtype, param_dtype=param_dtype, source=tokenizer_dir)
  vision_dir = vision_directory(vision_tower, d, config_path)
  vision = vision_config(vision_dir, dtype=dtype, param_dtype=param_dtype or text.param_dtype)
  check_mm_hidden_size(d, vision, config_path, vision_dir)
  layer, strategy = feature_selection(d, flavor, vision, config_path)
  kind = projector_type(d, config_path)
  token, grow = _image_token(image_token_id, text.vocab_size, tokenizer_dir, config_path)
  if grow:
    source = AddedRowSource(source)
    if tokenizer.has_tokenizer(tokenizer_dir):
      tokenizer_dir = tokenizer_with_image_token(tokenizer_dir, token)
    text = text.replace(vocab_size=token + 1, source=tokenizer_dir)
  config = LVLMConfig(text=text, vision=vision, image_token_id=token, projector_type=kind,
                      projector_bias=True, feature_layers=(layer,), feature_strategy=strategy)
  if tokenizer.has_tokenizer(tokenizer_dir):
    processor_dir = _processor_dir(tokenizer_dir, config, vision_dir, d, template)
    config = config.replace(text=config.text.replace(source=processor_dir))
  return _load(config, source, vision_dir, param_dtype)
