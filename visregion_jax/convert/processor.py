"""The processor of an LVLM: tokenizer with `<image>`, image processor, chat template.

llava-hf users never tokenize by hand: `AutoProcessor.from_pretrained(model_dir)`,
`processor.apply_chat_template(messages)` and `processor(images=, text=)` must rebuild
exactly the inputs the model was trained on. `write_processor` writes that directory
with transformers' own `LlavaProcessor.save_pretrained` (processor_config.json, the
tokenizer, chat_template.jinja) plus a standalone preprocessor_config.json for readers
that load the image processor alone. It is written where an LVLM is made (a training
run's `tokenizer/`, an original checkpoint's conversion), so every export, which copies
the model's tokenizer directory, carries it.

`read_image_processor` is the inverse our own inference uses (`generate --image`).
"""

import json
import os

from visregion_jax.convert import tensor_files
from visregion_jax.data.chat_jinja import chat_template_jinja
from visregion_jax.data.image_processing import ImageProcessorConfig, hf_pads_to_square
from visregion_jax.errors import VisRegionError
from visregion_jax.models.lvlm import LVLMConfig

PROCESSOR_CONFIG = "processor_config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"


def processor_settings(config: LVLMConfig) -> dict:
  """LlavaProcessor's image-token settings, checked to give our number of image tokens.

  LlavaProcessor expands each `<image>` into (side / patch)^2 + additional - (1 if the
  strategy is "default") tokens; a tower with a class token (CLIP) has one additional.
  """
  vision = config.vision
  additional = 1 if vision.kind == "clip" else 0
  count = (vision.image_size // vision.patch_size) ** 2 + additional - (config.feature_strategy == "default")
  if count != config.num_image_tokens:
    raise VisRegionError("vision_feature_select_strategy", f"expected LlavaProcessor's count of image "
                         f"tokens ({count}) to equal the model's {config.num_image_tokens}")
  return dict(patch_size=vision.patch_size, vision_feature_select_strategy=config.feature_strategy,
              num_additional_image_tokens=additional)


def write_processor(out_dir: str, tokenizer, config: LVLMConfig, image: ImageProcessorConfig, *,
                    pad_to_square: bool, template: str) -> None:
  """Saves the LlavaProcessor of a model trained with `data.template=template` on images
  preprocessed by `image` (after LLaVA's pad-to-square when `pad_to_square`)."""
  from transformers import LlavaImageProcessorPil, LlavaProcessor  # pylint: disable=import-outside-toplevel
  image_dict = image.to_hf_dict(pad_to_square=pad_to_square)
  image_processor = LlavaImageProcessorPil(**{k: v for k, v in image_dict.items() if k != "image_processor_type"})
  chat_template = chat_template_jinja(template, tokenizer)
  tokenizer.chat_template = chat_template
  processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template,
                             image_token="<image>", **processor_settings(config))
  image_token = tokenizer.convert_tokens_to_ids("<image>")
  if image_token != config.image_token_id:
    raise VisRegionError(out_dir, f"expected the tokenizer to give <image> the id {config.image_token_id}, "
                         f"got {image_token}")
  os.makedirs(out_dir, exist_ok=True)
  processor.save_pretrained(out_dir)
  with open(os.path.join(out_dir, PREPROCESSOR_CONFIG), "w", encoding="utf-8") as f:
    json.dump(image_dict, f, indent=2, sort_keys=True)


def read_image_processor(source: str) -> tuple:
  """(ImageProcessorConfig, pad_to_square) of a model directory's processor files."""
  path = os.path.join(source, PROCESSOR_CONFIG)
  if os.path.isfile(path):
    d = tensor_files.read_json_object(path).get("image_processor")
    where = f"{path}: image_processor"
  else:
    path = os.path.join(source, PREPROCESSOR_CONFIG)
    if not os.path.isfile(path):
      raise VisRegionError(source, f"expected the image processor ({PROCESSOR_CONFIG} or "
                           f"{PREPROCESSOR_CONFIG}) beside the model")
    d, where = tensor_files.read_json_object(path), path
  config = ImageProcessorConfig.from_hf_dict(d, where)
  return config, hf_pads_to_square(d)
