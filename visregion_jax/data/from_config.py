"""The data side of a training config: the sources it names and the pipeline settings
for a given model and tokenizer (training, evaluation and pruning read data alike)."""

import json
import os

from visregion_jax.data import image_processing, pipeline, sources
from visregion_jax.models.lvlm import LVLM


def image_processor_config(vision, tower_dir: str) -> image_processing.ImageProcessorConfig:
  """The tower's preprocessor_config.json when present, else the size of `vision` (a
  VisionConfig) with CLIP/SigLIP stats."""
  path = os.path.join(tower_dir, "preprocessor_config.json") if tower_dir else ""
  if path and os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return image_processing.ImageProcessorConfig.from_hf_dict(json.load(f), path)
  if vision.kind == "clip":
    base = image_processing.ImageProcessorConfig.clip_336()
    return image_processing.ImageProcessorConfig(
        kind="clip", size=vision.image_size, crop_size=vision.image_size,
        image_mean=base.image_mean, image_std=base.image_std)
  return image_processing.ImageProcessorConfig(kind="siglip", size=vision.image_size, crop_size=None,
                                               image_mean=(0.5,) * 3, image_std=(0.5,) * 3)


def data_config_for(config, model, tokenizer, tower_dir: str) -> pipeline.DataConfig:
  """The pipeline settings of `config.data` for this model (image tokens, processor)."""
  d = config.data
  is_lvlm = isinstance(model, LVLM)
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
  return pipeline.DataConfig(
      template=d.template, max_length=d.max_length, global_batch_size=config.train.batch_size,
      image_token_id=model.config.image_token_id if is_lvlm else -1,
      num_image_tokens=model.config.num_image_tokens if is_lvlm else 0,
      image=image_processor_config(model.config.vision, tower_dir) if is_lvlm else image_processing.ImageProcessorConfig.clip_336(),
      pad_token_id=int(pad or 0), pad_to_square=d.pad_to_square,
      max_images_per_sample=d.max_images_per_sample, buckets=tuple(d.buckets), packing=d.packing,
      max_images_per_row=d.max_images_per_row, pack_window=d.pack_window,
      num_workers=d.num_workers, seed=config.seed, num_epochs=d.get("num_epochs"))


def open_source(d, split: str):
  """The `train` or `eval` source of a `data` section, or None where it names none."""
  if d.get("tfds_dir"):
    return sources.TfdsSource(d.tfds_dir, split)
  path = d.train_json if split == "train" else d.get("eval_json")
  return sources.JsonSource(path, d.image_root) if path else None


def text_source(d):
  """The text-only held-out source (`data.text_eval_json`), or None."""
  return sources.JsonSource(d.text_eval_json, d.image_root) if d.get("text_eval_json") else None
