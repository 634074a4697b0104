"""MMLU (5-shot, by the log-likelihood of the answer letters) as lmms-eval scores it: `acc`, 0..1.

The generation runner ranks the letters A-D after each question by log-likelihood and
writes the best as the row's `prediction`; a question is right when that letter is the
answer's (`answer` is its index, as in the dataset). lmms-eval (its `mmlu` task, taken from
lm-evaluation-harness) reports `acc` per subject task `mmlu_<subject>` and, weighted by
size, for the whole: the share of right answers. Both are given here, the subjects as
`mmlu_<subject>/acc`.
"""

from visregion_jax.benchmarks.scoring import fields
from visregion_jax.errors import VisRegionError

LETTERS = ("A", "B", "C", "D")


def mmlu(rows: list, where: list) -> dict:
  subjects = {}
  for row, w in zip(rows, where):
    subject = fields.field(row, "subject", w, str, "the MMLU subject, e.g. abstract_algebra")
    answer = fields.field(row, "answer", w, int, "the index 0-3 of the right choice")
    if not 0 <= answer < len(LETTERS):
      raise VisRegionError(w, f"expected field 'answer' to be 0, 1, 2 or 3, got {answer}")
    letter = fields.prediction(row, w)
    if letter not in LETTERS:
      raise VisRegionError(w, f"expected field 'prediction' to be the letter A, B, C or D ranked first, got {letter!r}")
    subjects.setdefault(subject, []).append(letter == LETTERS[answer])
  every = [right for answers in subjects.values() for right in answers]
  per_subject = {f"mmlu_{s}/acc": sum(subjects[s]) / len(subjects[s]) for s in sorted(subjects)}
  return {"acc": sum(every) / len(every), **per_subject}
