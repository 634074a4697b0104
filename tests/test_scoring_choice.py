"""ScienceQA-IMG and SEED-Bench scores equal lmms-eval's own (0.7.3) to 1e-9.

References: `sqa_process_results` (tasks/scienceqa/utils.py) averaged with
lmms_eval/api/metrics.py's `mean`, and `seed_process_result` with `seed_aggregation_result`
(tasks/seedbench/utils.py).
"""

import lmms_eval_reference
import pytest
from lmms_eval_reference import cleaned
from scoring_cases import ANSWERS

from visregion_jax.benchmarks.scoring import score

LETTER_ANSWERS = ["A. cat", "B. dog", "b", "C.", "D.dog", "(C) cat", "c) three", "The answer is C.", "Ä. x", "A.B"]


@pytest.fixture(scope="module")
def lmms():
  with lmms_eval_reference.loaded() as load:
    yield load


def scienceqa_rows() -> list:
  rows = []
  for n in (2, 3, 4, 5):
    for answer in range(n):
      for pred in ANSWERS + LETTER_ANSWERS:
        rows.append({"question": "Which is a mammal?", "hint": "", "choices": [f"option {i}" for i in range(n)],
                     "answer": answer, "prediction": pred})
  return rows


def seedbench_rows(kinds=("image", "video")) -> list:
  return [{"question_id": f"{kind}-{i}", "question": "What is it?", "choice_a": "cat", "choice_b": "dog",
           "choice_c": "bird", "choice_d": "fish", "answer": letter, "data_type": kind, "prediction": pred}
          for kind in kinds for letter in "ABCD" for i, pred in enumerate(ANSWERS + LETTER_ANSWERS)]


def scienceqa_reference(rows, lmms) -> dict:
  utils = lmms("tasks.scienceqa.utils")
  scores = [utils.sqa_process_results(r, [cleaned(r["prediction"], lmms)])["exact_match"] for r in rows]
  return {"exact_match": lmms("api.metrics").mean(scores)}


def seedbench_reference(rows, lmms) -> dict:
  utils = lmms("tasks.seedbench.utils")
  by_metric = {}
  for r in rows:
    for metric, result in utils.seed_process_result(r, [cleaned(r["prediction"], lmms)]).items():
      by_metric.setdefault(metric, []).append(result)
  return {metric: utils.seed_aggregation_result(results) for metric, results in by_metric.items()}


def test_scienceqa_equal_to_lmms_eval(lmms):
  rows = scienceqa_rows()
  assert len(rows) >= 50
  for row in rows:
    assert score("scienceqa_img", [row]) == pytest.approx(scienceqa_reference([row], lmms), abs=1e-9), row
  total = score("scienceqa_img", rows)
  assert total == pytest.approx(scienceqa_reference(rows, lmms), abs=1e-9)
  assert 0 < total["exact_match"] < 1


@pytest.mark.parametrize("kinds", [("image", "video"), ("image",), ("video",)])
def test_seedbench_equal_to_lmms_eval(kinds, lmms):
  rows = seedbench_rows(kinds)
  assert len(rows) >= 50
  for row in rows:
    assert score("seedbench", [row]) == pytest.approx(seedbench_reference([row], lmms), abs=1e-9), row
  ours, theirs = score("seedbench", rows), seedbench_reference(rows, lmms)
  assert ours.keys() == theirs.keys()
  assert ours == pytest.approx(theirs, abs=1e-9)


def test_metric_names_are_the_task_yamls():
  assert lmms_eval_reference.metric_names("scienceqa/scienceqa_img.yaml") == ["exact_match"]
  assert lmms_eval_reference.metric_names("seedbench/seedbench.yaml") == ["seed_image", "seed_video", "seed_all"]
  assert list(score("seedbench", seedbench_rows())) == ["seed_image", "seed_video", "seed_all"]
