"""Held-out metrics against hand counts and transformers.

A tiny random LLaVA answers a handful of samples. transformers' greedy decoding of
each prompt on its own (no batch, no padding) gives the answers, and the references
are written so that a known subset of samples is answered correctly: accuracy and
per-task accuracy are then counted by hand. Perplexity is exp of a numpy
cross-entropy over transformers' logits of each sample on its own. Evaluation itself
batches, left pads, mixes text-only and image samples and skips a bad sample.
"""

import json
import math

import ml_collections
import numpy as np
import pytest
import tokenizers
import torch
import transformers
from conftest import random_llava_model, tiny_llama_config
from PIL import Image

from visregion_jax import convert
from visregion_jax import evaluation as evaluate
from visregion_jax.data import pipeline, sources
from visregion_jax.data.image_processing import ImageProcessorConfig
from visregion_jax.data.tokenize import IGNORE_INDEX as IGNORE
from visregion_jax.evaluation import answer_matches

VOCAB = 128
IMAGE_TOKEN = VOCAB - 1
IMAGE = 14
SPECIALS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
# (id, user turn, whether the reference is the model's own answer). Sample 3 has two
# images and is skipped (one image per sample); sample 7 lies beyond the limits. The
# batches (samples 0-2 and 4-6) have equally long longest prompts and as many images:
# one compile serves both.
SAMPLES = (("eval-colour-00000", "<image>\nw5 w6 w7 w8 w9", True),
           ("eval-colour-00001", "<image>\nw8 w9", False),
           ("eval-text-00002", "w10 w11 w12", True),
           ("eval-count-00003", "<image>\n<image>\nw13", True),
           ("eval-count-00004", "<image>\nw14 w15 w16 w17 w18", True),
           ("eval-digits-00005", "w19 <image>\nw20", False),
           ("eval-text-00006", "w21 w22", True),
           ("eval-position-00007", "<image>\nw23", False))
LIMIT = 6  # usable samples 0, 1, 2, 4, 5, 6
MAX_NEW_TOKENS = 6


def word_tokenizer():
  """A word-level fast tokenizer with a chat template; `<image>` is the last id."""
  vocab = {"<unk>": 0, "<s>": 1, "</s>": 2,
           **{f"w{i}": i for i in range(3, VOCAB - len(SPECIALS) - 1)}}
  backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                             bos_token="<s>", eos_token="<|end|>", pad_token="<unk>")
  tok.add_tokens(list(SPECIALS) + ["<image>"], special_tokens=True)
  tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> "
                       "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}")
  assert len(tok) == VOCAB and tok.convert_tokens_to_ids("<image>") == IMAGE_TOKEN
  return tok


def write_source(root, references: list) -> sources.JsonSource:
  rng = np.random.RandomState(0)
  samples = []
  for (sample_id, question, _), answer in zip(SAMPLES, references):
    sample = {"id": sample_id, "conversations": [{"from": "human", "value": question},
                                                 {"from": "gpt", "value": answer}]}
    images = [f"{sample_id}-{k}.png" for k in range(question.count("<image>"))]
    for name in images:
      Image.fromarray(rng.randint(0, 256, (20, 17, 3), np.uint8)).save(root / name)
    if images:
      sample["image"] = images
    samples.append(sample)
  (root / "eval.json").write_text(json.dumps(samples))
  return sources.JsonSource(str(root / "eval.json"), str(root))


def prompt_of(record: dict) -> np.ndarray:
  """The tokens before the first learned one: what the model is asked."""
  return record["input_ids"][:np.flatnonzero(record["labels"] != IGNORE)[0]]


def hf_inputs(record: dict, ids: np.ndarray) -> dict:
  inputs = {"input_ids": torch.tensor(ids[None], dtype=torch.long)}
  if len(record["pixel_values"]):
    inputs["pixel_values"] = torch.tensor(record["pixel_values"].transpose(0, 3, 1, 2))
  return inputs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(our model, tokenizer, source, data config, transformers' answer per sample, loaded
  samples, transformers' model)."""
  tok = word_tokenizer()
  vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=IMAGE, patch_size=7)
  text = tiny_llama_config(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_key_value_heads=2, eos_token_id=tok.eos_token_id, pad_token_id=0)
  hf = random_llava_model(transformers.LlavaConfig(vision_config=vision, text_config=text,
                                                   image_token_id=IMAGE_TOKEN), seed=1)
  with torch.no_grad():  # strong values: the whole prompt, not its common end, decides the answer
    for name, p in hf.named_parameters():
      if name.startswith("model.language_model.") and "v_proj" in name:
        p.mul_(20.0)
  model_dir = tmp_path_factory.mktemp("llava")
  hf.save_pretrained(model_dir)
  ours = convert.from_hf(str(model_dir), dtype="float32")
  config = pipeline.DataConfig(
      template="tokenizer", max_length=64, global_batch_size=2, image_token_id=IMAGE_TOKEN,
      num_image_tokens=ours.config.num_image_tokens, pad_token_id=0,
      image=ImageProcessorConfig(kind="clip", size=IMAGE, crop_size=IMAGE,
                                 image_mean=(0.48, 0.46, 0.41), image_std=(0.27, 0.26, 0.28)))

  # transformers answers each prompt alone; the prompts do not depend on the answers.
  data = tmp_path_factory.mktemp("data")
  loader = pipeline.SampleLoader(write_source(data, ["w3"] * len(SAMPLES)), tok, config)
  records = [loader(i) for i in range(len(SAMPLES))]
  assert [i for i, r in enumerate(records) if "skip" in r] == [3]
  answers = []
  for record in records:
    if "skip" in record:
      answers.append("w3")  # never asked
      continue
    ids = prompt_of(record)
    with torch.no_grad():
      out = hf.generate(**hf_inputs(record, ids), do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                        pad_token_id=0)[0, len(ids):].numpy()
    assert IMAGE_TOKEN not in out
    answers.append(tok.decode(out, skip_special_tokens=True).strip())
  usable = [a for r, a in zip(records, answers) if "skip" not in r]
  assert all(usable) and len(set(usable)) == len(usable)  # answers tell samples apart

  # The model's own answer is correct; a wrong reference is it plus a word.
  references = [a if own else a + " w3" for a, (_, _, own) in zip(answers, SAMPLES)]
  source = write_source(data, references)
  final = [pipeline.SampleLoader(source, tok, config)(i) for i in range(len(SAMPLES))]
  for a, b in zip(records, final):
    if "skip" not in a:
      np.testing.assert_array_equal(prompt_of(a), prompt_of(b))
  return ours, tok, source, config, answers, final, hf


def test_answer_accuracy_equals_hand_count(setup):
  ours, tok, source, config, answers, _, _ = setup
  result = evaluate.answer_accuracy(ours, tok, source, config, limit=LIMIT, batch_size=3,
                                    max_new_tokens=MAX_NEW_TOKENS)
  # Usable samples 0, 1, 2, 4, 5, 6; references of 0, 2, 4 and 6 are the model's answers.
  assert result["count"] == 6
  assert result["accuracy"] == pytest.approx(4 / 6)
  assert result["per_task"] == {"colour": 0.5, "count": 1.0, "digits": 0.0, "text": 1.0}
  assert [e["id"] for e in result["examples"]] == [SAMPLES[i][0] for i in (0, 1, 2, 4)]
  assert [e["prediction"] for e in result["examples"]] == [answers[i] for i in (0, 1, 2, 4)]


def test_mean_loss_equals_hand_cross_entropy(setup):
  ours, tok, source, config, _, records, hf = setup
  total, count = 0.0, 0
  for record in records[:7]:  # limit 7: indices 0..6, of which 3 is skipped
    if "skip" in record:
      continue
    with torch.no_grad():
      logits = hf(**hf_inputs(record, record["input_ids"])).logits[0].double().numpy()
    z = logits[:-1] - logits[:-1].max(-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
    targets = record["labels"][1:]
    supervised = np.flatnonzero(targets != IGNORE)
    total -= log_probs[supervised, targets[supervised]].sum()
    count += len(supervised)
  result = evaluate.mean_loss(ours, tok, source, config, limit=7, batch_size=2)
  assert result["tokens"] == count
  np.testing.assert_allclose(result["loss"], total / count, rtol=1e-5)
  np.testing.assert_allclose(result["perplexity"], math.exp(total / count), rtol=1e-4)


@pytest.mark.parametrize("prediction, reference, expected", [
    # articles, prepositions and trailing nouns around the answer
    ("An apple.", "apple", True), ("the left", "left", True), ("On the left.", "left", True),
    ("to the right side", "right", True), ("left side", "left", True),
    ("on the right side", "left", False),
    # punctuation and case
    ("RED!", "red", True), ("(red)", "red", True), ("'red'", "Red", True), ("red?", "red", True),
    ("red-blue", "red", False), ("7.5", "7", False),
    # number words, either side
    ("Seven", "7", True), ("5", "five", True), ("ten", "10", True),
    ("The answer is seven.", "7", True), ("It is the number seven", "7", True),
    ("five shapes", "5", True), ("seventy", "7", False),
    # hedges and lists
    ("red or blue", "red", False), ("Either red or blue.", "red", False),
    ("maybe red", "red", False), ("probably left", "left", False), ("red and blue", "red", False),
    ("3 3", "3", False),
    # negation
    ("not red", "red", False), ("It's not red", "red", False),
    ("The circle is not red.", "red", False), ("It's red, not blue", "red", False),
    # only the first non-empty line, and its first sentence, count
    ("\n\nred\nblue", "red", True), ("red. Not blue.", "red", True), ("Blue. Red.", "red", False),
])
def test_answer_matches_table(prediction, reference, expected):
  assert answer_matches(prediction, reference) is expected


@pytest.mark.parametrize("held_out_loss", [True, False])
def test_evaluate_measures_what_is_asked(setup, held_out_loss):
  """`evaluate` reports the accuracy and loss above; without the held-out loss (pruning's
  report, the region study) the accuracy is unchanged and no loss pass runs."""
  ours, tok, source, config, _, _, _ = setup
  settings = ml_collections.ConfigDict({
      "data": {"eval_json": source.json_path, "image_root": source.image_root, "text_eval_json": ""},
      "eval": {"num_samples": LIMIT, "max_new_tokens": MAX_NEW_TOKENS}})
  out = evaluate.evaluate(settings, ours, tok, config, held_out_loss=held_out_loss)
  assert out["eval_accuracy"] == pytest.approx(4 / 6)
  assert "text_perplexity" not in out
  if held_out_loss:
    expected = evaluate.mean_loss(ours, tok, source, config, limit=LIMIT)["loss"]
    assert out["eval_loss"] == pytest.approx(expected, rel=1e-6)
  else:
    assert "eval_loss" not in out
