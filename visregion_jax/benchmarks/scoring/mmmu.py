"""MMMU validation as lmms-eval scores it: `mmmu_acc`, 0..1, rounded to 5 places as lmms-eval rounds it.

A multiple-choice answer is right when its letter (mmmu_parse.py) is the answer letter; an
open answer when one of its candidates matches the answer normalised the same way: a number
equal after rounding to 2 places, a text containing the answer's text. The accuracy is per
subject (from the row `id`, "validation_<Subject>_<n>") and then weighted by the subjects'
sizes, which is the share of right answers up to rounding. Multiple-choice answers naming no
option get a seeded random letter (mmmu_parse.py), as MMMU's rules guess one.
"""

import ast
import random
import re

from visregion_jax.benchmarks.scoring import fields
from visregion_jax.benchmarks.scoring.mmmu_parse import choice_letter, normalised, open_candidates
from visregion_jax.benchmarks.scoring.response import without_reasoning
from visregion_jax.errors import VisRegionError

_ID = re.compile(r"^[^_]*_(.+?)_\d+$")
_TYPES = ("multiple-choice", "open")
GUESS_SEED = 0


def _options(row: dict, where: str) -> list:
  """The options, a list of strings; the dataset stores it as the text of a Python list."""
  options = fields.field(row, "options", where, (str, list), "the options, a list or its Python text")
  if isinstance(options, str):
    try:
      options = ast.literal_eval(options)
    except (ValueError, SyntaxError):
      options = None
  if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
    raise VisRegionError(where, "expected field 'options' to be a non-empty list of strings (or its Python text)")
  return options


def _answers(row: dict, where: str) -> list:
  answer = fields.field(row, "answer", where, (str, list), "the right letter, or the open answer(s)")
  answers = answer if isinstance(answer, list) else [answer]
  if not answers or not all(isinstance(a, str) for a in answers):
    raise VisRegionError(where, "expected field 'answer' to be a string or a non-empty list of strings")
  return answers


def open_is_right(answers: list, candidates: list) -> bool:
  targets = [t for a in answers for t in normalised(a)]
  return any(any(isinstance(t, str) and t in c for t in targets) if isinstance(c, str) else c in targets
             for c in candidates)


def mmmu_val(rows: list, where: list) -> dict:
  rng = random.Random(GUESS_SEED)
  subjects = {}  # subject -> [right, ...], in order of first appearance
  for row, w in zip(rows, where):
    match = _ID.match(fields.field(row, "id", w, str, "MMMU's id, validation_<Subject>_<n>"))
    if not match:
      raise VisRegionError(w, f"expected field 'id' like validation_<Subject>_<n>, got {row['id']!r}")
    kind = fields.field(row, "question_type", w, str, "multiple-choice or open")
    if kind not in _TYPES:
      raise VisRegionError(w, f"expected field 'question_type' to be multiple-choice or open, got {kind!r}")
    answers = _answers(row, w)
    response = without_reasoning(fields.prediction(row, w))
    if kind == "multiple-choice":
      right = choice_letter(response, _options(row, w), rng) in answers
    else:
      right = open_is_right(answers, open_candidates(response))
    subjects.setdefault(match.group(1), []).append(right)
  accuracy = weighted = 0.0
  for right in subjects.values():
    accuracy += sum(right) / len(right) * len(right)
    weighted += len(right)
  return {"mmmu_acc": round(accuracy / weighted, 5)}
