"""Open-ended VQA scores as lmms-eval computes them: `exact_match` in 0..1 for TextVQA, VQAv2, GQA.

TextVQA and VQAv2 use the VQA accuracy: with the prediction and the ten human answers
normalised (evalai.py), each answer in turn is left out and the prediction scores
min(matches among the other nine / 3, 1); the question scores the mean of the ten. The two
differ in lmms-eval in what "the other nine" means: TextVQA leaves out one list position,
VQAv2 leaves out every answer record equal to the one left out (records carry an
`answer_id`, so this is one record unless the dataset repeats one). GQA has one answer and
is scored by lmms-eval's generic exact match: lower-cased, ASCII punctuation deleted,
compared whole.
"""

import statistics
import string

from visregion_jax.benchmarks.scoring import evalai, fields
from visregion_jax.benchmarks.scoring.response import without_reasoning
from visregion_jax.errors import VisRegionError

_ASCII_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _vqa_accuracy(matches_without_each: list) -> float:
  return statistics.mean(min(1.0, matches / 3) for matches in matches_without_each)


def _mean(values: list) -> float:
  return sum(values) / len(values)


def textvqa_row(row: dict, where: str) -> float:
  answers = [evalai.normalise_textvqa(a) for a in
             fields.string_list(row, "answers", where, "the ten human answers; the test split has none")]
  pred = evalai.normalise_textvqa(without_reasoning(fields.prediction(row, where)))
  hits = [a == pred for a in answers]
  return _vqa_accuracy([sum(hits) - hit for hit in hits])


def vqav2_row(row: dict, where: str) -> float:
  records = fields.field(row, "answers", where, list, "the ten human answer records {answer, answer_id, ...}")
  if not records or not all(isinstance(r, dict) and isinstance(r.get("answer"), str) for r in records):
    raise VisRegionError(where, "expected field 'answers' to be a non-empty list of objects with a string 'answer'")
  records = [{**r, "answer": evalai.normalise_vqav2(r["answer"])} for r in records]
  pred = evalai.normalise_vqav2(without_reasoning(fields.prediction(row, where)))
  return _vqa_accuracy([sum(other["answer"] == pred for other in records if other != left_out)
                        for left_out in records])


def _exact_match_form(text: str) -> str:
  """Lower-cased, ASCII punctuation deleted, in a NumPy string array as lmms-eval holds it:
  trailing NUL characters vanish and a lower case longer than the text is cut to its length."""
  text = text.rstrip("\x00")
  return text.lower()[:len(text)].translate(_ASCII_PUNCTUATION).rstrip("\x00")


def gqa_row(row: dict, where: str) -> float:
  answer = fields.field(row, "answer", where, str, "the ground-truth short answer")
  pred = without_reasoning(fields.prediction(row, where))
  return float(_exact_match_form(pred) == _exact_match_form(answer))


def scorer(row_score):
  """A task's scorer: the mean of `row_score` over its rows, as `exact_match`."""
  return lambda rows, where: {"exact_match": _mean([row_score(r, w) for r, w in zip(rows, where)])}


textvqa_val = scorer(textvqa_row)
vqav2_val = scorer(vqav2_row)
gqa = scorer(gqa_row)
