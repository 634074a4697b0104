"""MMBench-EN dev with circular evaluation, by rule only: lmms-eval's `mmbench_en_dev_static`.

No GPT judge is asked. lmms-eval's `mmbench_en_dev` asks GPT for the answers its rules cannot
read; its `mmbench_en_dev_static` reads those with a general letter extractor instead, and
that is what this computes, under lmms-eval's metric name for both, `gpt_eval_score`
(percent, 0..100), although no GPT is involved.

Circular evaluation: a question's rows are the row with `index` below 1e6 and its copies
with the options rotated (index + k * 1e6). The question is right only when every copy is
answered right. A copy's letter is read by option_letters.py: a letter standing as a word
or in a marked form, else the one option whose text the answer contains, else the general
extractor over the options present (those of A-D that are not null).
"""

import math

from visregion_jax.benchmarks.scoring import fields, option_letters
from visregion_jax.benchmarks.scoring.response import without_reasoning
from visregion_jax.errors import VisRegionError

_COPY_STRIDE = 1_000_000
_OPTIONS = "ABCD"


def _options(row: dict, where: str) -> dict:
  """letter -> text of the options present (null or NaN is absent, as in the dataset)."""
  options = {}
  for letter in _OPTIONS:
    if letter not in row:
      raise VisRegionError(where, f"expected field {letter!r} (option {letter}'s text, or null when absent)")
    text = row[letter]
    if text is None or (isinstance(text, float) and math.isnan(text)):
      continue
    if not isinstance(text, str):
      raise VisRegionError(where, f"expected field {letter!r} to be a string or null, got {type(text).__name__}")
    options[letter] = text
  return options


def copy_is_right(row: dict, where: str) -> bool:
  answer = fields.field(row, "answer", where, str, "the right option's letter")
  options = _options(row, where)
  response = without_reasoning(fields.prediction(row, where))
  letter = option_letters.letter_as_token(response) or option_letters.letter_by_option_text(response, options)
  if not letter:
    letter = option_letters.extracted_letter(response, sorted(options))
  return letter == answer


def mmbench_en_dev(rows: list, where: list) -> dict:
  copies = {}  # question index -> [copy is right, ...]
  seen = {}
  for row, w in zip(rows, where):
    index = fields.field(row, "index", w, int, "MMBench's question index, + k * 1e6 for rotated copies")
    if index < 0 or index in seen:
      raise VisRegionError(w, f"expected each non-negative index once; {index} "
                           + (f"is also at {seen[index]}" if index in seen else "is negative"))
    seen[index] = w
    copies.setdefault(index % _COPY_STRIDE, []).append(copy_is_right(row, w))
  for index, w in seen.items():
    if index % _COPY_STRIDE not in seen:
      raise VisRegionError(w, f"expected question {index % _COPY_STRIDE}, of which index {index} is a rotated copy")
  questions = [all(copies[index]) for index in seen if index < _COPY_STRIDE]
  return {"gpt_eval_score": sum(questions) / len(questions) * 100}
