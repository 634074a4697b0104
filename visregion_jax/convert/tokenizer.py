"""Tokenizers (and image processors) travel with the weights: loaded from the source, saved on export."""

import os
import shutil

from visregion_jax.errors import VisRegionError

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "preprocessor_config.json", "processor_config.json",
)


def has_tokenizer(source: str) -> bool:
  if source.endswith(".gguf"):
    return os.path.isfile(source)
  return bool(source) and any(os.path.exists(os.path.join(source, f)) for f in TOKENIZER_FILES)


def load_tokenizer(source: str):
  """The HF tokenizer of a model directory or GGUF file; local files only, no remote code."""
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
  if not has_tokenizer(source):
    raise VisRegionError(source or "model", "expected tokenizer files beside the weights")
  try:
    if source.endswith(".gguf"):
      return AutoTokenizer.from_pretrained(os.path.dirname(source), gguf_file=os.path.basename(source),
                                           local_files_only=True)
    return AutoTokenizer.from_pretrained(source, local_files_only=True)
  except (OSError, ValueError) as e:
    raise VisRegionError(source, f"expected a loadable tokenizer ({e})") from None


def save_tokenizer(source: str, out_dir: str) -> bool:
  """Copies (or, for GGUF, converts) the tokenizer next to exported weights."""
  if not has_tokenizer(source) or os.path.realpath(source) == os.path.realpath(out_dir):
    return False
  if source.endswith(".gguf"):
    load_tokenizer(source).save_pretrained(out_dir)
    return True
  for name in TOKENIZER_FILES:
    path = os.path.join(source, name)
    if os.path.isfile(path):
      shutil.copyfile(path, os.path.join(out_dir, name))
  return True
