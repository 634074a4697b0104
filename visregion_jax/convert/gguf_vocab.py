"""The tokenizer inside a GGUF export: llama.cpp's `tokenizer.*` keys.

From a GGUF source its tokenizer keys are copied as they are. From an HF tokenizer:
  - `tokenizer.model` (SentencePiece: Llama-2, Vicuna, Phi-3) -> llama.cpp's "llama"
    vocabulary: pieces, scores and types read from the model's protobuf;
  - `tokenizer.json` of a byte-fallback BPE over "▁" pieces (a SentencePiece model
    converted by transformers) -> "llama" too. It has no scores, so each merged piece
    scores minus its merge rank, which orders llama.cpp's merges as the ranks order
    HF's (transformers ranks merges by the SentencePiece scores, so this is their order);
  - `tokenizer.json` of a byte-level BPE (GPT-2 style: SmolLM2, Llama-3) -> "gpt2":
    tokens, merges, and `tokenizer.ggml.pre`, the name of llama.cpp's pre-tokenizer.
    llama.cpp's own converter picks that name from a hash of one text's token ids;
    here it is read from the pre-tokenizer that `tokenizer.json` spells out, matched
    against the few llama.cpp implements with the same regexes (PRE_TOKENIZERS), and
    anything else is refused rather than guessed.
Special token ids, whether BOS / EOS are added (observed by encoding with transformers)
and the chat template are written as well. A model whose vocabulary is larger than its
tokenizer's (an LVLM's added image row) gets "[PAD<id>]" placeholder tokens.
"""

import json
import os
import re

from visregion_jax.convert.gguf_metadata import read_fields
from visregion_jax.convert.tensor_files import read_json_object
from visregion_jax.convert.tokenizer import has_tokenizer, load_tokenizer
from visregion_jax.errors import VisRegionError
from visregion_jax.models.config import DecoderConfig

_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.json pre-tokenizer steps (see _pre_steps) + ignore_merges -> llama.cpp's name for it.
PRE_TOKENIZERS = {
    ((("byte_level", True, False),), False): "gpt-2",
    ((("digits", True), ("byte_level", True, False)), False): "smollm",
    ((("split", _LLAMA3_REGEX, "Isolated", False), ("byte_level", False, False)), True): "llama-bpe",
}
# llama.cpp's token types (gguf.TokenType; SentencePiece's protobuf uses the same numbers).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_ADDED_SCORE = -1000.0  # what llama.cpp's converter gives added tokens


def add_vocab(writer, config: DecoderConfig) -> list:
  """Adds the tokenizer keys of `config.source` (a .gguf file or HF tokenizer files);
  returns the token strings written."""
  source = config.source
  if source.endswith(".gguf") and os.path.isfile(source):
    return _copy_gguf_tokenizer(writer, source, config.vocab_size)
  if has_tokenizer(source):
    return _add_hf_tokenizer(writer, source, config)
  raise VisRegionError(source or "model", "expected tokenizer files beside the weights (a GGUF file "
                       "needs its tokenizer for llama.cpp)")


# --- from a GGUF file ---------------------------------------------------------------------


def _copy_gguf_tokenizer(writer, path: str, vocab_size: int) -> list:
  import gguf  # pylint: disable=import-outside-toplevel
  fields = read_fields(path, "tokenizer.")
  tokens = next((value for key, _, _, value in fields if key == "tokenizer.ggml.tokens"), [])
  if len(tokens) > vocab_size:
    raise VisRegionError(f"{path}: tokenizer.ggml.tokens", f"expected at most {vocab_size} tokens (the "
                         f"model's vocabulary), got {len(tokens)}")
  padding = range(len(tokens), vocab_size)
  pads = {"tokenizer.ggml.tokens": [f"[PAD{i}]".encode() for i in padding],
          "tokenizer.ggml.token_type": [UNUSED] * len(padding),
          "tokenizer.ggml.scores": [_ADDED_SCORE] * len(padding)}
  for key, kind, element, value in fields:
    sub = None if element is None else gguf.GGUFValueType(element)
    writer.add_key_value(key, value + pads[key] if key in pads else value, gguf.GGUFValueType(kind), sub_type=sub)
  return [t.decode("utf-8", errors="replace") for t in tokens + pads["tokenizer.ggml.tokens"]]


# --- from HF tokenizer files ----------------------------------------------------------------


def _add_hf_tokenizer(writer, source: str, config: DecoderConfig) -> list:
  tok = load_tokenizer(source)
  spm_path = os.path.join(source, "tokenizer.model")
  json_path = os.path.join(source, "tokenizer.json")
  if os.path.isfile(spm_path):
    (vocab, space_prefix), model, pre, merges = _sentencepiece(spm_path), "llama", "default", []
  elif os.path.isfile(json_path):
    model, pre, vocab, merges, space_prefix = _tokenizer_json(read_json_object(json_path), json_path)
  else:
    raise VisRegionError(source, "expected tokenizer.json or tokenizer.model for GGUF export")
  tokens, scores, types = _with_added_tokens(vocab, tok, config.vocab_size, source, model)
  writer.add_tokenizer_model(model)
  writer.add_tokenizer_pre(pre)
  writer.add_token_list(tokens)
  writer.add_token_types(types)
  if model == "llama":
    writer.add_token_scores(scores)
    writer.add_add_space_prefix(_space_prefix(source, space_prefix))
  else:
    writer.add_token_merges(merges)
  _add_special_tokens(writer, tok, config)
  return tokens


def _sentencepiece(path: str) -> tuple:
  """({id: (piece, score, type)}, add_dummy_prefix) of a SentencePiece model file."""
  from transformers.convert_slow_tokenizer import import_protobuf  # pylint: disable=import-outside-toplevel
  proto = import_protobuf().ModelProto()
  try:
    with open(path, "rb") as f:
      proto.ParseFromString(f.read())
  except Exception as e:  # protobuf raises DecodeError (and others) on a damaged file
    raise VisRegionError(path, f"expected a SentencePiece model ({type(e).__name__})") from None
  if proto.trainer_spec.model_type not in (1, 2):  # 1 = unigram, 2 = BPE: both score-ranked
    raise VisRegionError(f"{path}: trainer_spec.model_type",
                         f"expected a unigram or BPE SentencePiece model, got {proto.trainer_spec.model_type}")
  vocab = {i: (p.piece, p.score, p.type if p.type in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE)
               else NORMAL) for i, p in enumerate(proto.pieces)}
  return vocab, bool(proto.normalizer_spec.add_dummy_prefix)


def _tokenizer_json(d: dict, where: str) -> tuple:
  """(model, pre, {id: (token, score, type)}, merges, space prefix) of a BPE tokenizer.json."""
  model = d.get("model") or {}
  if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
    raise VisRegionError(f"{where}: model.type", f"expected a BPE tokenizer, got {model.get('type')!r}")
  merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
  if any(len(m.split(" ")) != 2 for m in merges):
    raise VisRegionError(f"{where}: model.merges", "expected pairs of tokens without spaces")
  if model.get("byte_fallback") and _is_metaspace(d):
    ranks = {}
    for rank, merge in enumerate(merges):
      ranks.setdefault(merge.replace(" ", ""), -float(rank + 1))
    vocab = {i: (t, ranks.get(t, 0.0 if len(t) == 1 else -1e9), BYTE if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t)
                 else NORMAL) for t, i in model["vocab"].items()}
    return "llama", "default", vocab, [], _metaspace_prefix(d)
  steps = _pre_steps(d.get("pre_tokenizer"), where)
  name = PRE_TOKENIZERS.get((steps, bool(model.get("ignore_merges"))))
  if d.get("normalizer") is not None or name is None:
    raise VisRegionError(f"{where}: pre_tokenizer", "expected a pre-tokenizer llama.cpp implements (GPT-2 "
                         "byte-level, SmolLM digits + byte-level, Llama-3 split + byte-level) and no "
                         f"normalizer; got {json.dumps(d.get('pre_tokenizer'))[:200]}")
  vocab = {i: (t, 0.0, NORMAL) for t, i in model["vocab"].items()}
  return "gpt2", name, vocab, merges, False


def _pre_steps(pre, where: str) -> tuple:
  """A pre-tokenizer as comparable steps; offsets-only options (trim_offsets) left out."""
  if pre is None:
    return ()
  kind = pre.get("type")
  if kind == "Sequence":
    return tuple(s for p in pre.get("pretokenizers", []) for s in _pre_steps(p, where))
  if kind == "ByteLevel":
    return (("byte_level", bool(pre.get("use_regex", True)), bool(pre.get("add_prefix_space"))),)
  if kind == "Digits":
    return (("digits", bool(pre.get("individual_digits"))),)
  if kind == "Split":
    return (("split", (pre.get("pattern") or {}).get("Regex"), pre.get("behavior"), bool(pre.get("invert"))),)
  return ((kind,),)


def _is_metaspace(d: dict) -> bool:
  """SentencePiece-style pieces: "▁" for spaces, by a Metaspace pre-tokenizer or a Replace normalizer."""
  text = json.dumps([d.get("pre_tokenizer"), d.get("normalizer")])
  return '"Metaspace"' in text or '"content": "\\u2581"' in text


def _metaspace_prefix(d: dict) -> bool:
  """Whether "▁" is put before the text (llama.cpp's add_space_prefix)."""
  pre, normalizer = json.dumps(d.get("pre_tokenizer")), json.dumps(d.get("normalizer"))
  if '"Metaspace"' in pre:
    return '"prepend_scheme": "never"' not in pre and '"add_prefix_space": false' not in pre
  return '"Prepend"' in normalizer


def _space_prefix(source: str, default: bool) -> bool:
  """tokenizer_config.json's add_prefix_space wins where it is set (as in llama.cpp's converter)."""
  path = os.path.join(source, "tokenizer_config.json")
  value = read_json_object(path).get("add_prefix_space") if os.path.isfile(path) else None
  return value if isinstance(value, bool) else default


def _with_added_tokens(vocab: dict, tok, vocab_size: int, source: str, model: str) -> tuple:
  """Token strings, scores and types for ids 0..vocab_size-1: the base vocabulary, the
  tokenizer's added tokens over it, placeholders for ids neither has."""
  entries = dict(vocab)
  for i, added in tok.added_tokens_decoder.items():
    kind = CONTROL if added.special else USER_DEFINED
    base = entries.get(i)
    if base is not None and base[0] == added.content and base[2] != NORMAL:
      continue  # SentencePiece's own <s>, </s>, <unk> keep their types
    entries[i] = (added.content, _ADDED_SCORE, kind)
  if model == "llama" and tok.unk_token_id is not None and tok.unk_token_id in entries:
    text, score, _ = entries[tok.unk_token_id]
    entries[tok.unk_token_id] = (text, score, UNKNOWN)
  if entries and max(entries) >= vocab_size:
    raise VisRegionError(source, f"expected token ids below the model's vocabulary size {vocab_size}, "
                         f"got {max(entries)}")
  tokens, scores, types = [], [], []
  for i in range(vocab_size):
    text, score, kind = entries.get(i, (f"[PAD{i}]", _ADDED_SCORE, UNUSED))
    tokens.append(text)
    scores.append(float(score))
    types.append(int(kind))
  return tokens, scores, types


def _add_special_tokens(writer, tok, config: DecoderConfig) -> None:
  """Special ids (the tokenizer's, else the model config's), add BOS / EOS as transformers
  does it, and the chat template."""
  eos = tok.eos_token_id if tok.eos_token_id is not None else (config.eos_token_ids or (None,))[0]
  ids = {"bos": tok.bos_token_id if tok.bos_token_id is not None else config.bos_token_id,
         "eos": eos, "unk": tok.unk_token_id,
         "pad": tok.pad_token_id if tok.pad_token_id is not None else config.pad_token_id}
  for name, value in ids.items():
    if value is not None:
      getattr(writer, f"add_{name}_token_id")(int(value))
  plain = tok.encode("a", add_special_tokens=False)
  full = tok.encode("a")
  start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), None)
  if start is None:
    raise VisRegionError(tok.name_or_path, "expected the text's tokens inside the encoding with special tokens")
  before, after = full[:start], full[start + len(plain):]
  if before not in ([], [ids["bos"]]) or after not in ([], [ids["eos"]]):
    raise VisRegionError(tok.name_or_path, f"expected at most BOS before and EOS after the text "
                         f"(llama.cpp adds no other special tokens), got {before} and {after}")
  writer.add_add_bos_token(bool(before))
  writer.add_add_eos_token(bool(after))
  template = tok.chat_template
  if isinstance(template, dict):
    template = [{"name": k, "template": v} for k, v in template.items()]
  if template:
    writer.add_chat_template(template)
