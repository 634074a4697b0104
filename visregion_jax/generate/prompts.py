"""Chat prompts as model inputs, the way transformers' processors build them.

Text goes through the tokenizer's chat template. For an LVLM each prompt's images
become content entries before its text (`[{"type": "image"}, ..., {"type": "text"}]`),
an LVLM's rendered text is tokenized with the tokenizer's special tokens (as
`LlavaProcessor.__call__` does; the templates of our exports write no BOS; a decoder's
own template writes its BOS itself, as before), every
`<image>` token is repeated once per image feature, and the images are preprocessed as
the model's image processor says (processor_config.json, read by
convert/processor.py). So `generate --image` and `AutoProcessor` feed a model the same
ids and pixels, and both the prompts the model was trained on.
"""

from typing import Optional, Sequence

import numpy as np

from visregion_jax.data.image_processing import ImageProcessorConfig, preprocess
from visregion_jax.errors import VisRegionError


def _messages(prompt: str, num_images: int) -> list:
  if not num_images:
    return [{"role": "user", "content": prompt}]
  content = [{"type": "image"}] * num_images + [{"type": "text", "text": prompt}]
  return [{"role": "user", "content": content}]


def _left_padded(rows: list, pad_id: int) -> tuple:
  width = max(len(r) for r in rows)
  ids = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for i, row in enumerate(rows):
    ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
  return ids, mask


def encode_chat(tokenizer, prompts: Sequence[str], images: Optional[Sequence[Sequence]] = None, *,
                image_token_id: int = -1, num_image_tokens: int = 0,
                image_processor: Optional[ImageProcessorConfig] = None, pad_to_square: bool = True) -> dict:
  """{"input_ids", "attention_mask"} (left padded, int32) and, with images,
  "pixel_values" (float32 NHWC, in prompt order) for one user turn per prompt.

  `images[i]` are the images (PIL or uint8 arrays) prompt i asks about.
  """
  images = [list(x) for x in images] if images is not None else [[] for _ in prompts]
  if len(images) != len(prompts):
    raise VisRegionError("images", f"expected one list of images per prompt ({len(prompts)}), got {len(images)}")
  with_images, is_lvlm = any(images), image_token_id >= 0
  if with_images and (image_processor is None or not is_lvlm or num_image_tokens < 1):
    raise VisRegionError("images", "expected a vision-language model: this model takes no images")
  texts = [tokenizer.apply_chat_template(_messages(p, len(x)), tokenize=False, add_generation_prompt=True)
           for p, x in zip(prompts, images)]
  rows = []
  for text in texts:
    ids = tokenizer(text, add_special_tokens=is_lvlm)["input_ids"]
    rows.append([t for i in ids for t in ([i] * num_image_tokens if i == image_token_id else [i])])
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
  ids, mask = _left_padded(rows, int(pad or 0))
  out = {"input_ids": ids, "attention_mask": mask}
  if with_images:
    found = int(np.sum(ids == image_token_id)) // num_image_tokens
    if found != sum(len(x) for x in images):
      raise VisRegionError("chat template", f"expected one <image> per image ({sum(len(x) for x in images)}), "
                           f"the rendered prompts hold {found}")
    out["pixel_values"] = preprocess([im for x in images for im in x], image_processor, pad_to_square)
  return out
