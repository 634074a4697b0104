"""Held-out metrics: answer accuracy by greedy generation, and loss / perplexity.

Prompts are the tokenized conversation cut where the learned (assistant) tokens
begin, so evaluation uses exactly the training template and image expansion.
"""

import math

import jax
import numpy as np
from flax import nnx

from visregion_jax import generate
from visregion_jax.data.pipeline import SampleLoader, collate
from visregion_jax.data.synthetic import answer_matches, sample_task
from visregion_jax.train_step import IGNORE, token_losses


def _prompt_and_answer(loaded: dict):
  learned = np.flatnonzero(loaded["labels"] != IGNORE)
  return loaded["input_ids"][:learned[0]], loaded["input_ids"][learned]


def answer_accuracy(model, tokenizer, source, data_config, *, limit: int = 64, batch_size: int = 8,
                    max_new_tokens: int = 8) -> dict:
  """{"accuracy", "per_task", "count", "examples"} over the first `limit` usable samples."""
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
  correct, per_task, examples = 0, {}, []
  for start in range(0, len(items), batch_size):
    chunk = items[start:start + batch_size]
    prompts = [_prompt_and_answer(loaded)[0] for _, _, loaded in chunk]
    width = max(len(p) for p in prompts)
    ids = np.full((len(chunk), width), data_config.pad_token_id, np.int32)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
      ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
    extra = {}
    if hasattr(model, "vision_tower"):
      pixels = np.concatenate([loaded["pixel_values"] for _, _, loaded in chunk])
      extra = {"pixel_values": pixels} if len(pixels) else {}
    out = generate.generate(model, ids, mask, max_new_tokens=max_new_tokens, **extra)
    for (sample_id, answer, _), tokens in zip(chunk, out):
      text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
      ok = answer_matches(text, answer)
      correct += ok
      task = sample_task({"id": sample_id}) or "other"
      hits, n = per_task.get(task, (0, 0))
      per_task[task] = (hits + ok, n + 1)
      if len(examples) < 4:
        examples.append({"id": sample_id, "answer": answer, "prediction": text})
  model.train()
  return {"accuracy": correct / max(len(items), 1), "count": len(items), "examples": examples,
          "per_task": {t: hits / n for t, (hits, n) in sorted(per_task.items())}}


def mean_loss(model, tokenizer, source, data_config, *, limit: int = 64, batch_size: int = 8) -> dict:
  """Mean next-token loss over the learned tokens of up to `limit` samples, and its exp."""
  loader = SampleLoader(source, tokenizer, data_config)
  records = [r for r in (loader(i) for i in range(min(len(source), limit))) if "skip" not in r]
  graphdef, state = nnx.split(model)

  @jax.jit
  def batch_loss(state, batch):
    m = nnx.merge(graphdef, state)
    m.eval()
    return token_losses(m, batch)

  total, count = 0.0, 0
  for start in range(0, len(records), batch_size):
    batch = collate(records[start:start + batch_size], data_config)
    batch.pop("index")
    s, n = batch_loss(state, batch)
    total, count = total + float(s), count + int(n)
  loss = total / max(count, 1)
  return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}

