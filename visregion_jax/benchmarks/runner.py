"""Running a model over a benchmark task: batched, sharded over the mesh, resumable.

A task is answered in global batches of `batch_size` samples, in the task's order.
Process p of P takes the batch's p-th contiguous share (its rows of the batch split
over the mesh's batch axes, as training splits batches), reads and decodes only its own
samples' images, and decodes its rows as part of one sharded batch: greedy generation
with the KV cache (generate/decode.py), or for MMLU the log-likelihood of each answer
letter after the 5-shot context (lm-eval-harness's method: the letter of the highest
wins). The answers are gathered to every process and process 0 appends the batch's
lines to WORKDIR/eval/<task>.jsonl: the row's own fields plus `prediction` (what
`evaluate score` re-scores). A rerun continues after the last complete line, so an
interrupted evaluation loses at most one batch. Samples whose images cannot be read
are counted by reason and recorded as wrong answers (unanswered.py).
"""

import functools
import json
import os
from dataclasses import dataclass
from typing import Optional

import jax
import numpy as np
from flax import nnx

from visregion_jax import sharding
from visregion_jax.benchmarks import prompts, rows, tasks, unanswered
from visregion_jax.data import skip
from visregion_jax.data.image_processing import ImageProcessorConfig
from visregion_jax.errors import VisRegionError
from visregion_jax.generate.decode import generate

LETTERS = (" A", " B", " C", " D")
# Why a sample's images could not be read (benchmarks/images.py): coded as integers to
# gather them across processes.
FAILURES = (skip.MISSING_IMAGE, skip.CORRUPT_IMAGE, skip.PATH_OUTSIDE_ROOT, skip.NOT_A_FILE)


@dataclass(frozen=True)
class Setup:
  """How the model is asked: its tokenizer and image processing, and the run's settings."""
  tokenizer: object
  pad_token_id: int
  image_token_id: int = -1            # -1: a text decoder
  num_image_tokens: int = 0
  image_processor: Optional[ImageProcessorConfig] = None
  pad_to_square: bool = True
  batch_size: int = 8                 # global, over all processes
  max_new_tokens: int = 16
  style: str = "llava"
  limit: int = 0                      # samples per task, from the first (0: all)
  mesh: Optional[object] = None


def _gather(local: np.ndarray) -> np.ndarray:
  """Every process's rows, in process order (each process gets all)."""
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(local, tiled=True))


def completed_lines(path: str) -> int:
  """Complete lines of a predictions file, after cutting a partial last line (a write
  interrupted mid-line), agreed by all processes (process 0 reads the file)."""
  count = 0
  if jax.process_index() == 0 and os.path.isfile(path):
    with open(path, "rb+") as f:
      data = f.read()
      keep = data.rfind(b"\n") + 1
      if keep < len(data):
        f.truncate(keep)
      count = data[:keep].count(b"\n")
  return rows.agreed_max(count)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _choice_logprobs(graphdef, state, input_ids, attention_mask, choice_ids):
  """log p(choice token | context) [B, C] at each row's last position."""
  model = nnx.merge(graphdef, state)
  logits = model.forward(input_ids, attention_mask=attention_mask, logits="last").logits[:, -1]
  return jax.nn.log_softmax(logits.astype(np.float32), axis=-1)[:, choice_ids]


def _single_tokens(tokenizer, prompt: prompts.ChoicePrompt) -> tuple:
  """(context ids, one token id per continuation) as lm-eval-harness splits a pair: the
  whole text tokenized, the context's tokens cut off the front."""
  context = tokenizer(prompt.context, add_special_tokens=False)["input_ids"]
  ids = []
  for continuation in prompt.continuations:
    whole = tokenizer(prompt.context + continuation, add_special_tokens=False)["input_ids"]
    if whole[:len(context)] != context or len(whole) != len(context) + 1:
      raise VisRegionError("mmlu", f"expected each answer letter {continuation!r} to be one token after the "
                           "context in this tokenizer (its log-likelihood is read at one position)")
    ids.append(whole[-1])
  return context, ids


class TaskRun:
  """One task of one model: answers the samples not yet in the predictions file."""

  def __init__(self, model, data, setup: Setup, out_dir: str):
    self.model, self.data, self.setup = model, data, setup
    self.task: tasks.Task = data.task
    self.path = os.path.join(out_dir, f"{self.task.name}.jsonl")
    self.total = min(len(data), setup.limit) if setup.limit else len(data)
    self.graphdef, self.state = nnx.split(model)
    procs = jax.process_count()
    if setup.batch_size % procs:
      raise VisRegionError("eval.batch_size", f"expected a multiple of the {procs} processes, got {setup.batch_size}")
    self.local = setup.batch_size // procs
    self.broken = {}
    if self.task.answer == tasks.LOGLIKELIHOOD:  # every MMLU context ends "Answer:"; checked per sample
      self.choice_ids = _single_tokens(setup.tokenizer, prompts.ChoicePrompt("Answer:", LETTERS))[1]

  def run(self) -> dict:
    """Answers the remaining samples; returns {"samples", "answered_now", "broken_images"}."""
    start = completed_lines(self.path)
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
    for first in range(start, self.total, self.setup.batch_size):
      self._batch(first)
    return {"samples": self.total, "answered_now": max(self.total - start, 0), "broken_images": self.broken}

  def _batch(self, first: int) -> None:
    last = min(first + self.setup.batch_size, self.total)
    mine = first + jax.process_index() * self.local
    own = list(self.data.samples(mine, min(mine + self.local, last))) if mine < last else []
    answers, failures = self._answer(own)
    answers, failures = _gather(answers), _gather(failures)
    if jax.process_index() == 0:
      lines = []
      for offset, sample in enumerate(self.data.samples(first, last)):
        line = {**sample.fields}
        reason = FAILURES[failures[offset] - 1] if failures[offset] else ""
        if reason:
          self.broken[reason] = self.broken.get(reason, 0) + 1
          line.update(prediction=unanswered.wrong_prediction(self.task, line), image_error=reason)
        else:
          line["prediction"] = self._text(answers[offset])
        lines.append(json.dumps(line, ensure_ascii=False) + "\n")
      with open(self.path, "a", encoding="utf-8") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())

  def _answer(self, own: list) -> tuple:
    """This process's answers [local, ...] and failure reasons [local] ("" = answered)."""
    s = self.setup
    failures = np.zeros(self.local, np.int32)  # 0: answered, else 1 + the index in FAILURES
    if self.task.answer == tasks.LOGLIKELIHOOD:
      contexts = [None] * self.local
      for i, sample in enumerate(own):
        prompt = prompts.build_prompt(self.task.name, sample.fields, exemplars=self.data.exemplars(sample))
        contexts[i], choice_ids = _single_tokens(s.tokenizer, prompt)
        if choice_ids != self.choice_ids:
          raise VisRegionError(f"mmlu sample {sample.index}", "expected the answer letters to tokenize as "
                               "after any other context")
      batch = rows.context_rows(contexts, self.local, s).inputs
      if s.mesh is not None:
        batch = sharding.global_batch(batch, s.mesh)
      scores = _choice_logprobs(self.graphdef, self.state, batch["input_ids"], batch["attention_mask"],
                                np.asarray(self.choice_ids, np.int32))
      scores = sharding.local_rows(scores, s.mesh) if s.mesh is not None else np.asarray(scores)
      return np.argmax(scores, axis=-1).astype(np.int32), failures
    chats, images = [None] * self.local, [[] for _ in range(self.local)]
    vision = s.num_image_tokens > 0
    for i, sample in enumerate(own):
      if len(sample.images) and vision:
        loaded = sample.images.load()
        if not loaded.ok:
          failures[i] = 1 + FAILURES.index(loaded.reason)
          continue
        images[i] = list(loaded.images)
      elif len(sample.images):
        raise VisRegionError("eval.model", f"expected a vision-language model: {self.task.name} asks about images")
      chats[i] = prompts.build_prompt(self.task.name, sample.fields, num_images=len(images[i]), style=s.style)
    inputs = rows.chat_rows(chats, images, self.local, s).inputs
    ids, mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
    tokens = generate(self.model, ids, mask, max_new_tokens=s.max_new_tokens, mesh=s.mesh, **inputs)
    return tokens, failures

  def _text(self, answer) -> str:
    if self.task.answer == tasks.LOGLIKELIHOOD:
      return LETTERS[int(answer)].strip()
    return self.setup.tokenizer.decode(answer, skip_special_tokens=True).strip()
