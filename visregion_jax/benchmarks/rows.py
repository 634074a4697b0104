"""One process's share of a benchmark batch as model inputs of fixed shapes.

Every process of a job builds its own rows (it alone decodes their images) and all must
hand `generate` arrays of the same shapes, so the prompt width (bucketed as
generate/decode.py says, to bound the number of compiles over a task) and the image
slots per row are agreed across processes first. Rows without a usable sample (past
the task's end, or a sample whose images are broken) are one padding token, answered
and thrown away. Images fill each row's own slots (`image_mask` marks the real ones),
so a split of the batch over processes and devices keeps each row with its images, as
training's collate does.
"""

from dataclasses import dataclass

import jax
import numpy as np

from visregion_jax.generate.decode import bucketed_width
from visregion_jax.generate.prompts import encode_chat


@dataclass
class Rows:
  """`input_ids` / `attention_mask` [rows, width] left padded, and for an LVLM
  `pixel_values` [rows * slots, H, W, 3] with `image_mask` [rows * slots]."""
  inputs: dict


def agreed_max(value: int) -> int:
  """The largest `value` over all processes (every process must call this)."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return int(np.max(multihost_utils.process_allgather(np.int64(value))))


def chat_rows(prompts: list, images: list, count: int, setup) -> Rows:
  """Rows for `count` slots: prompt i (a ChatPrompt, or None for padding) with its
  PIL images `images[i]`."""
  real = [i for i, p in enumerate(prompts) if p is not None]
  vision = setup.num_image_tokens > 0
  encoded = encode_chat(setup.tokenizer, [prompts[i].text for i in real], [images[i] for i in real],
                        image_token_id=setup.image_token_id, num_image_tokens=setup.num_image_tokens,
                        image_processor=setup.image_processor, pad_to_square=setup.pad_to_square) if real else None
  width = bucketed_width(agreed_max(encoded["input_ids"].shape[1] if real else 1))
  slots = agreed_max(max([len(images[i]) for i in real] or [0])) if vision else 0
  ids = np.full((count, width), setup.pad_token_id, np.int32)
  mask = np.zeros((count, width), np.int32)
  ids[:, -1], mask[:, -1] = setup.pad_token_id, 1  # padding rows: one token, answered and discarded
  for row, i in enumerate(real):
    ids[i], mask[i] = setup.pad_token_id, 0
    ids[i, width - encoded["input_ids"].shape[1]:] = encoded["input_ids"][row]
    mask[i, width - encoded["attention_mask"].shape[1]:] = encoded["attention_mask"][row]
  inputs = {"input_ids": ids, "attention_mask": mask}
  if vision and slots:
    side = setup.image_processor.crop_size or setup.image_processor.size
    shape = (side, side, 3)
    pixels = np.zeros((count * slots, *shape), np.float32)
    image_mask = np.zeros(count * slots, bool)
    flat = encoded["pixel_values"] if real and "pixel_values" in encoded else np.zeros((0, *shape), np.float32)
    used = 0
    for i in real:
      n = len(images[i])
      pixels[i * slots:i * slots + n] = flat[used:used + n]
      image_mask[i * slots:i * slots + n] = True
      used += n
    inputs.update(pixel_values=pixels, image_mask=image_mask)
  return Rows(inputs)


def context_rows(contexts: list, count: int, setup) -> Rows:
  """Rows for `count` slots of plain token contexts (lists of ids, or None for padding)."""
  width = bucketed_width(agreed_max(max([len(c) for c in contexts if c is not None] or [1])))
  ids = np.full((count, width), setup.pad_token_id, np.int32)
  mask = np.zeros((count, width), np.int32)
  ids[:, -1], mask[:, -1] = setup.pad_token_id, 1
  for i, context in enumerate(contexts):
    if context is not None:
      ids[i, width - len(context):], mask[i, width - len(context):] = context, 1
  return Rows({"input_ids": ids, "attention_mask": mask})
