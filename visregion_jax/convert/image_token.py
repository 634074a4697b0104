"""The `<image>` token that original LLaVA / Bunny checkpoints do not have.

Their code marks each image with the id -200 and splices the features in before the
embedding lookup, so neither the vocabulary nor the tokenizer has an image token;
llava-hf and our LVLM need a real id. Adding one grows the vocabulary by a row set to
the mean of the existing rows (the mean llava-hf's conversion script centers its new
rows on, without the random spread, so a conversion is reproducible), and the
tokenizer gets `<image>` as a special token at that id.
"""

import atexit
import os
import shutil
import tempfile
from typing import Optional

import numpy as np

from visregion_jax.convert import tokenizer
from visregion_jax.errors import VisRegionError

IMAGE_TOKEN = "<image>"
VOCAB_KEYS = ("model.embed_tokens.weight", "lm_head.weight")


class AddedRowSource:
  """A tensor source whose vocabulary tensors carry one more row: their mean row."""

  def __init__(self, source):
    self.name, self._source = source.name, source

  def keys(self) -> set:
    return self._source.keys()

  def where(self, key: str) -> str:
    return self._source.where(key)

  def shape(self, key: str) -> tuple:
    shape = tuple(self._source.shape(key))
    return (shape[0] + 1,) + shape[1:] if key in VOCAB_KEYS else shape

  def get(self, key: str) -> np.ndarray:
    w = self._source.get(key)
    if key not in VOCAB_KEYS:
      return w
    mean = w.astype(np.float32).mean(axis=0, keepdims=True).astype(w.dtype)
    return np.concatenate([w, mean])


def existing_image_token(tokenizer_dir: str):
  """The id the tokenizer already gives `<image>`, or None (also when there is no tokenizer)."""
  if not tokenizer.has_tokenizer(tokenizer_dir):
    return None
  return tokenizer.load_tokenizer(tokenizer_dir).get_vocab().get(IMAGE_TOKEN)


def tokenizer_with_image_token(tokenizer_dir: str, token_id: int, out: Optional[str] = None) -> str:
  """A directory with `tokenizer_dir`'s tokenizer plus `<image>` at `token_id`.

  Export and checkpoint saving copy the tokenizer from the model config's `source`
  directory, so the extended tokenizer is written once: to `out` (a training run's
  workdir), or else to a directory that lives as long as the process; the other
  files there (chat template, image processor) are copied alongside.
  """
  from transformers import AddedToken  # pylint: disable=import-outside-toplevel
  tok = tokenizer.load_tokenizer(tokenizer_dir)
  size = len(tok)
  tok.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
  got = tok.convert_tokens_to_ids(IMAGE_TOKEN)
  if got != token_id:
    raise VisRegionError(tokenizer_dir, f"expected the tokenizer to give {IMAGE_TOKEN} the new "
                         f"vocabulary row {token_id}, got {got} (the tokenizer has {size} tokens "
                         f"for {token_id} rows); pass the image token id (--image-token-id)")
  if out is None:
    out = tempfile.mkdtemp(prefix="visregion_tokenizer_")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
  os.makedirs(out, exist_ok=True)
  tok.save_pretrained(out)
  source_dir = tokenizer_dir if os.path.isdir(tokenizer_dir) else os.path.dirname(tokenizer_dir)
  for name in tokenizer.TOKENIZER_FILES:
    src = os.path.join(source_dir, name)
    if os.path.isfile(src) and not os.path.exists(os.path.join(out, name)):
      shutil.copyfile(src, os.path.join(out, name))
  return out
