"""One LLaVA-format conversation -> input_ids and labels, as LLaVA's training code builds them.

The conversation is rendered by a chat template (templates.py) into one string whose
characters are marked learned or not. Like LLaVA's `tokenizer_image_token`, the string
is split at `<image>` tags and each piece is tokenized on its own (no special tokens
added); each tag becomes `num_image_tokens` copies of `image_token_id` without passing
through the tokenizer, so it never merges with neighbouring text and need not be in the
vocabulary. Text after a tag keeps its leading "\\n" and is tokenized as the start of a
string, as LLaVA does (a SentencePiece tokenizer gives "▁", "<0x0A>"); for tokenizers
that treat text after a special token the same way (legacy Llama, byte-level BPE) this
equals tokenizing the whole string with `<image>` as a special token, as transformers'
`LlavaProcessor` does. Tags stay where the data puts them: LLaVA's `preprocess_multimodal`
also moves a turn's tag to its front ("<image>\\n" + stripped text), which would fold
several tags of one turn into one and so cannot serve multi-image samples.

A token is learned if any character it covers is learned (as transformers'
`return_assistant_tokens_mask` decides); that includes the token carrying the space
after vicuna's "ASSISTANT:". Labels are aligned with input_ids (-100 = not learned);
the loss shifts them.
"""

import dataclasses
import numbers

import numpy as np

from visregion_jax.data import skip
from visregion_jax.data.skip import SkipSample
from visregion_jax.data.templates import ASSISTANT, IMAGE_TAG, SYSTEM, TEMPLATES, USER
from visregion_jax.errors import VisRegionError

IGNORE_INDEX = -100
_ROLES = {"human": USER, "gpt": ASSISTANT}


@dataclasses.dataclass(frozen=True)
class TokenizeConfig:
  template: str
  max_length: int
  image_token_id: int
  num_image_tokens: int

  def __post_init__(self):
    if self.template not in TEMPLATES:
      raise VisRegionError("template",
                           f"expected one of {', '.join(TEMPLATES)}, got {self.template!r}")
    for name in ("max_length", "num_image_tokens", "image_token_id"):
      value = getattr(self, name)
      if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise VisRegionError(name, f"expected an integer, got {value!r}")
    for name in ("max_length", "num_image_tokens"):
      if getattr(self, name) < 1:
        raise VisRegionError(name, f"expected at least 1, got {getattr(self, name)}")
    if not -2**31 <= self.image_token_id < 2**31:
      raise VisRegionError("image_token_id", f"expected an int32, got {self.image_token_id}")


@dataclasses.dataclass(frozen=True)
class TokenizedSample:
  input_ids: np.ndarray  # int32 [T]
  labels: np.ndarray     # int32 [T], IGNORE_INDEX where nothing is learned
  truncated: bool        # cut to max_length; the pipeline counts these


def parse_turns(conversations) -> list:
  """Validated (role, text) turns: an optional system turn, then human/gpt alternating."""
  if not isinstance(conversations, list):
    raise SkipSample(skip.WRONG_TYPES, "conversations is not a list")
  if not conversations:
    raise SkipSample(skip.EMPTY_CONVERSATION)
  for i, turn in enumerate(conversations):
    if not (isinstance(turn, dict) and isinstance(turn.get("from"), str)
            and isinstance(turn.get("value"), str)):
      raise SkipSample(skip.WRONG_TYPES,
                       f"turn {i} is not an object with string 'from' and 'value'")
    try:
      turn["value"].encode("utf-8")
    except UnicodeEncodeError:
      raise SkipSample(skip.BAD_TEXT, f"turn {i} holds a lone surrogate") from None
  turns = []
  if conversations[0]["from"] == SYSTEM:
    turns.append((SYSTEM, conversations[0]["value"]))
    conversations = conversations[1:]
  if not conversations:
    raise SkipSample(skip.EMPTY_CONVERSATION, "only a system turn")
  for i, turn in enumerate(conversations):
    expected = "human" if i % 2 == 0 else "gpt"
    if turn["from"] != expected:
      raise SkipSample(skip.WRONG_TYPES,
                       f"turn {i} is from {turn['from']!r}, expected {expected!r}")
    turns.append((_ROLES[expected], turn["value"]))
  if len(conversations) < 2:
    raise SkipSample(skip.NO_ASSISTANT_TURN)
  return turns


def _check_tokenizer(tokenizer, config: TokenizeConfig) -> None:
  if not getattr(tokenizer, "is_fast", False):
    raise VisRegionError("tokenizer", "expected a fast (Rust) tokenizer: labels are placed by "
                         "character offsets")
  for token in TEMPLATES[config.template].special_tokens:
    if len(tokenizer(token, add_special_tokens=False)["input_ids"]) != 1:
      raise VisRegionError(f"template {config.template!r}",
                           f"expected {token!r} to be a single token of the tokenizer")


def _leading_bos(tokenizer) -> list:
  """The BOS the tokenizer puts before text by itself, as LLaVA's `tokenizer(prompt)` gets it."""
  bos = tokenizer.bos_token_id
  return [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []


def _encode(text: str, learned_chars: np.ndarray, bos: list, tokenizer, config: TokenizeConfig):
  """input_ids, labels and an is-image mask for the rendered text."""
  n = config.num_image_tokens
  ids = [np.asarray(bos, np.int64)]
  labels = [np.full(len(bos), IGNORE_INDEX)]
  images = [np.zeros(len(bos), bool)]
  start = 0
  for k, chunk in enumerate(text.split(IMAGE_TAG)):
    if k:
      ids.append(np.full(n, config.image_token_id))
      labels.append(np.full(n, IGNORE_INDEX))
      images.append(np.ones(n, bool))
    if chunk:
      enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
      chunk_ids = np.asarray(enc["input_ids"], np.int64)
      offsets = np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2)
      # A token with no characters of its own (a prepended "▁") counts the one it sits on.
      lo = np.minimum(offsets[:, 0], len(chunk) - 1)
      hi = np.maximum(offsets[:, 1], lo + 1)
      learned_before = np.concatenate([[0], np.cumsum(learned_chars[start:start + len(chunk)])])
      ids.append(chunk_ids)
      labels.append(np.where(learned_before[hi] > learned_before[lo], chunk_ids, IGNORE_INDEX))
      images.append(np.zeros(len(chunk_ids), bool))
    start += len(chunk) + len(IMAGE_TAG)
  return (np.concatenate(ids).astype(np.int32), np.concatenate(labels).astype(np.int32),
          np.concatenate(images))


def tokenize_conversation(conversations: list, num_images: int, tokenizer,
                          config: TokenizeConfig) -> TokenizedSample:
  """input_ids and labels of one sample's `conversations`; raises SkipSample for bad samples."""
  turns = parse_turns(conversations)
  _check_tokenizer(tokenizer, config)
  template = TEMPLATES[config.template]
  segments = template.render(turns, tokenizer)
  text = "".join(s.text for s in segments)
  tags = text.count(IMAGE_TAG)
  if tags > num_images:
    raise SkipSample(skip.IMAGE_TAG_WITHOUT_IMAGE, f"{tags} <image> tags, {num_images} images")
  if tags < num_images:
    raise SkipSample(skip.IMAGE_WITHOUT_IMAGE_TAG, f"{tags} <image> tags, {num_images} images")
  learned_chars = np.concatenate([np.full(len(s.text), s.learned) for s in segments])
  bos = _leading_bos(tokenizer) if template.add_bos else []
  input_ids, labels, images = _encode(text, learned_chars, bos, tokenizer, config)

  truncated = len(input_ids) > config.max_length
  if truncated:
    if images[config.max_length:].any():
      raise SkipSample(skip.TOO_LONG, f"{len(input_ids)} tokens; max_length {config.max_length} "
                       "would cut image tokens")
    input_ids, labels = input_ids[:config.max_length], labels[:config.max_length]
  # The first label is never a target once the loss shifts labels by one.
  if not (labels[1:] != IGNORE_INDEX).any():
    raise SkipSample(skip.ALL_LABELS_MASKED, "truncated" if truncated else "")
  return TokenizedSample(input_ids=input_ids, labels=labels, truncated=truncated)
