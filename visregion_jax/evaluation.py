"""Held-out metrics: answer accuracy by greedy generation, and loss / perplexity.

The one evaluation of the library: training (`eval.*`), pruning's report and the
region study all call `evaluate`. Prompts are the tokenized conversation cut where
the learned (assistant) tokens begin, so evaluation uses exactly the training
template and image expansion.
"""

import math
import re

import jax
import numpy as np
from flax import nnx

from visregion_jax.data.from_config import open_source, text_source
from visregion_jax.data.pipeline import SampleLoader, collate
from visregion_jax.data.tokenize import IGNORE_INDEX
from visregion_jax.generate.decode import bucketed_width, generate
from visregion_jax.loss import row_token_losses
from visregion_jax.models.lvlm import LVLM

_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}
_COPULAS = {"is", "are", "its", "thats", "theres"}
_LEADING_FILLER = {"the", "a", "an", "on", "at", "in", "to", "answer", "digit", "number"}
_TRAILING_FILLER = {"side", "shape", "shapes", "half", "digit", "colour", "color"}



def sample_task(sample: dict) -> str:
  """The task named in a sample's id (`<split>-<task>-<n>`, as the demo's data names
  them); "" for other ids. Accuracy is reported per task."""
  parts = str(sample.get("id", "")).split("-")
  return parts[1] if len(parts) >= 3 else ""


def _words(text: str) -> list:
  text = text.lower().replace("'", "").replace("\u2019", "")
  words = re.sub(r"[^\w\s]|_", " ", text).split()
  return [_NUMBER_WORDS.get(w, w) for w in words]


def answer_matches(prediction: str, reference: str) -> bool:
  """Whether a generated answer states the reference answer and nothing else.

  Both texts are compared as words: lowercase, punctuation dropped, number words as
  digits ("Three." equals "3"). Only the prediction's first non-empty line counts
  (generation may run on), and it matches if its words are the reference's. Else its
  first sentence may wrap the answer in filler: anything up to its first
  "is"/"are"/"it's" ("The answer is red", "It's on the left"), leading articles and
  prepositions ("the", "on", ...) and trailing nouns ("left side", "3 shapes"). Any
  other word before or after the answer rejects it, so hedges ("red or blue"),
  negations ("not red") and lists never count as correct.
  """
  target = _words(reference)
  lines = [line for line in prediction.splitlines() if line.strip()]
  line = lines[0] if lines else ""
  if _words(line) == target:
    return True
  words = _words(re.split(r"[.!?;](?:\s|$)", line)[0])
  copula = next((i for i, w in enumerate(words) if w in _COPULAS), None)
  if copula is not None:
    words = words[copula + 1:]
  while words and words[0] in _LEADING_FILLER and words != target:
    words = words[1:]
  while words and words[-1] in _TRAILING_FILLER and words != target:
    words = words[:-1]
  return words == target


def _prompt_and_answer(loaded: dict):
  learned = np.flatnonzero(loaded["labels"] != IGNORE_INDEX)
  return loaded["input_ids"][:learned[0]], loaded["input_ids"][learned]


def answer_accuracy(model, tokenizer, source, data_config, *, limit: int = 64, batch_size: int = 8,
                    max_new_tokens: int = 8) -> dict:
  """{"accuracy", "per_task", "count", "examples", "hits"} over the first `limit` usable
  samples; `hits` is 1 / 0 per sample in order, for resampling (the region study)."""
  loader = SampleLoader(source, tokenizer, data_config)
  items = []
  for index in range(len(source)):
    loaded = loader(index)
    if "skip" in loaded:
      continue
    sample_id = source[index]["id"]
    answer = source[index]["conversations"][-1]["value"]
    items.append((sample_id, answer, loaded))
    if len(items) == limit:
      break
  model.eval()
  hits, per_task, examples = [], {}, []
  for start in range(0, len(items), batch_size):
    chunk = items[start:start + batch_size]
    prompts = [_prompt_and_answer(loaded)[0] for _, _, loaded in chunk]
    width = bucketed_width(max(len(p) for p in prompts))
    ids = np.full((len(chunk), width), data_config.pad_token_id, np.int32)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
      ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
    extra = {}
    if isinstance(model, LVLM):
      pixels = np.concatenate([loaded["pixel_values"] for _, _, loaded in chunk])
      extra = {"pixel_values": pixels} if len(pixels) else {}
    out = generate(model, ids, mask, max_new_tokens=max_new_tokens, **extra)
    for (sample_id, answer, _), tokens in zip(chunk, out):
      text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
      ok = int(answer_matches(text, answer))
      hits.append(ok)
      task = sample_task({"id": sample_id}) or "other"
      right, n = per_task.get(task, (0, 0))
      per_task[task] = (right + ok, n + 1)
      if len(examples) < 4:
        examples.append({"id": sample_id, "answer": answer, "prediction": text})
  model.train()
  return {"accuracy": sum(hits) / max(len(items), 1), "count": len(items), "examples": examples, "hits": hits,
          "per_task": {t: right / n for t, (right, n) in sorted(per_task.items())}}


def mean_loss(model, tokenizer, source, data_config, *, limit: int = 64, batch_size: int = 8) -> dict:
  """Mean next-token loss over the learned tokens of up to `limit` samples, its exp, and
  per sample the loss sum and token count (`per_sample`: [[sum, tokens]], for resampling)."""
  loader = SampleLoader(source, tokenizer, data_config)
  records = [r for r in (loader(i) for i in range(min(len(source), limit))) if "skip" not in r]
  graphdef, state = nnx.split(model)

  @jax.jit
  def batch_loss(state, batch):
    m = nnx.merge(graphdef, state)
    m.eval()
    return row_token_losses(m, batch)

  per_sample = []
  for start in range(0, len(records), batch_size):
    batch = collate(records[start:start + batch_size], data_config)
    batch.pop("index")
    sums, counts = batch_loss(state, batch)
    per_sample += [[float(s), int(n)] for s, n in zip(np.asarray(sums), np.asarray(counts))]
  total, count = sum(s for s, _ in per_sample), sum(n for _, n in per_sample)
  loss = total / max(count, 1)
  return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count, "per_sample": per_sample}



# What `evaluate` returns per sample rather than as one number: kept out of the logs.
PER_SAMPLE_KEYS = ("eval_examples", "eval_hits", "text_sample_losses")


def evaluate(config, model, tokenizer, data_config, *, held_out_loss: bool = True) -> dict:
  """Held-out answer accuracy and loss (`data.eval_json`) and text perplexity
  (`data.text_eval_json`), over `eval.num_samples` samples each, as configured; per
  sample also the answers' hits and the text samples' [loss sum, tokens].

  `held_out_loss=False` leaves out the held-out loss, a forward pass over every
  question as costly as answering them: training logs it, pruning's report and the
  region study compare accuracy and text perplexity only."""
  out, e = {}, config.eval
  eval_source = open_source(config.data, "eval")
  if eval_source is not None:
    acc = answer_accuracy(model, tokenizer, eval_source, data_config, limit=e.num_samples,
                          max_new_tokens=e.max_new_tokens)
    out.update(eval_accuracy=acc["accuracy"], eval_accuracy_per_task=acc["per_task"],
               eval_examples=acc["examples"], eval_hits=acc["hits"])
    if held_out_loss:
      out["eval_loss"] = mean_loss(model, tokenizer, eval_source, data_config, limit=e.num_samples)["loss"]
  text = text_source(config.data)
  if text is not None:
    text_loss = mean_loss(model, tokenizer, text, data_config, limit=e.num_samples)
    out.update(text_perplexity=text_loss["perplexity"], text_sample_losses=text_loss["per_sample"])
  return out
