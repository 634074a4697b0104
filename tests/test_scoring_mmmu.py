"""MMMU validation scores equal lmms-eval's own (0.7.3) to 1e-9.

The reference is `mmmu_process_results` and `mmmu_aggregate_results` of its
tasks/mmmu/utils.py (MMMU's parse_multi_choice_response / parse_open_response /
eval_multi_choice / eval_open rules, per-subject accuracy weighted by size, rounded to 5
places). Where an answer names no option, MMMU's rules guess with `random.choice`; lmms-eval
draws from the global generator, so the reference's `random` is replaced by a generator seeded
as ours (GUESS_SEED), and both draw for the same rows in the same order.
"""

import random

import lmms_eval_reference
import pytest
from lmms_eval_reference import cleaned
from scoring_cases import ANSWERS

from visregion_jax.benchmarks.scoring import mmmu, mmmu_parse, score

OPTIONS = ["cat", "dog", "a bird", "3.5", "The red house"]
OPEN_ANSWERS = ["3.5", "1,000", "x", "cat", "2", "42", "-5", "1.2e3", "red and white", "0.333"]
MORE_ANSWERS = ["The answer is 3.50", "So the result = 42", "I think (B) is correct but (C) might be",
                "x = 2\nso the answer is 4", "1.2e3", "-5", "therefore 1,000 apples",
                "The picture shows a dog sleeping next to a cat", "The answer is: x", "it is x.", "answer: 0.333",
                "thus 1000", "final answer is red and white", "a bird, clearly, in the red house picture",
                "(E)", "E", "the result is \n42", "B\n", " C"]
SUBJECTS = ["Art", "Math", "Computer_Science", "Basic_Medical_Science"]


@pytest.fixture(scope="module")
def lmms():
  with lmms_eval_reference.loaded() as load:
    yield load


def rows() -> list:
  out = []
  for i, pred in enumerate(ANSWERS + MORE_ANSWERS):
    subject = SUBJECTS[i % len(SUBJECTS)]
    if i % 2:
      n = 2 + i % 4
      out.append({"id": f"validation_{subject}_{i}", "question_type": "multiple-choice",
                  "options": repr(OPTIONS[:n]), "answer": "ABCDE"[i % n], "prediction": pred})
    else:
      out.append({"id": f"validation_{subject}_{i}", "question_type": "open", "options": "[]",
                  "answer": OPEN_ANSWERS[i % len(OPEN_ANSWERS)], "prediction": pred})
  return out


def reference(rows, lmms) -> dict:
  utils, guesses = lmms("tasks.mmmu.utils"), lmms("tasks._task_utils.mmmu_mcq_utils")
  saved, guesses.random = guesses.random, random.Random(mmmu.GUESS_SEED)
  try:
    results = [utils.mmmu_process_results(r, [cleaned(r["prediction"], lmms)])["mmmu_acc"] for r in rows]
    return {"mmmu_acc": utils.mmmu_aggregate_results(results)}
  finally:
    guesses.random = saved


def test_equal_to_lmms_eval(lmms):
  every = rows()
  assert len(every) >= 50
  for row in every:
    assert score("mmmu_val", [row]) == pytest.approx(reference([row], lmms), abs=1e-9), row
  for subset in (every, every[::2], every[1::2], every[:50]):
    assert score("mmmu_val", subset) == pytest.approx(reference(subset, lmms), abs=1e-9)
  assert 0 < score("mmmu_val", every)["mmmu_acc"] < 1


def test_every_answer_against_every_open_answer(lmms):
  for answer in OPEN_ANSWERS:
    chosen = [dict(r, question_type="open", answer=answer) for r in rows()]
    assert score("mmmu_val", chosen) == pytest.approx(reference(chosen, lmms), abs=1e-9), answer


def test_readers_equal_lmms_evals(lmms):
  utils = lmms("tasks.mmmu.utils")
  index2ans, letters = utils.get_multi_choice_info(OPTIONS)
  guesses = lmms("tasks._task_utils.mmmu_mcq_utils")
  for text in ANSWERS + MORE_ANSWERS:
    saved, guesses.random = guesses.random, random.Random(7)
    try:
      assert mmmu_parse.choice_letter(text, OPTIONS, random.Random(7)) == utils.parse_multi_choice_response(
        text, letters, index2ans), text
    finally:
      guesses.random = saved
    assert sorted(map(repr, mmmu_parse.open_candidates(text))) == sorted(map(repr, utils.parse_open_response(text)))
    assert mmmu_parse.normalised(text) == utils.normalize_str(text), text
    for answer in OPEN_ANSWERS:
      candidates = utils.parse_open_response(text)
      assert mmmu.open_is_right([answer], candidates) == utils.eval_open(answer, candidates), (text, answer)


def test_metric_name_is_the_task_yamls():
  assert lmms_eval_reference.metric_names("mmmu/mmmu_val.yaml") == ["mmmu_acc"]
