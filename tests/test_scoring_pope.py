"""POPE: lmms-eval's five metrics equal its own code's (0.7.3) to 1e-9, and the `pope_llava_*`
ones follow LLaVA-1.5's `eval_pope.py`.

The lmms-eval reference is `pope_process_results` and the five `pope_aggregate_*` functions of
its tasks/pope/utils.py. LLaVA's script is not a package that installs, so its parsing is
checked on cases worked out by hand from its rules (first sentence, commas dropped, split on
spaces, "No" / "no" / "not" as a word means no), and its metrics on a hand-counted confusion
matrix.
"""

import lmms_eval_reference
import pytest
from lmms_eval_reference import cleaned
from scoring_cases import ANSWERS

from visregion_jax.benchmarks.scoring import pope, score

METRICS = ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio")


@pytest.fixture(scope="module")
def lmms():
  with lmms_eval_reference.loaded() as load:
    yield load


def rows(truths=("yes", "no", "Yes", " no ")) -> list:
  return [{"question_id": str(i), "question": "Is there a dog in the image?", "answer": truth, "category": "random",
           "prediction": pred} for i, (truth, pred) in enumerate((t, p) for t in truths for p in ANSWERS)]


def reference(rows, lmms) -> dict:
  utils = lmms("tasks.pope.utils")
  results = [utils.pope_process_results(r, [cleaned(r["prediction"], lmms)]) for r in rows]
  return {m: getattr(utils, m.replace("pope_", "pope_aggregate_"))([r[m] for r in results]) for m in METRICS}


@pytest.mark.parametrize("subset", ["all", "yes only", "no only", "first 50", "right only"])
def test_equal_to_lmms_eval(subset, lmms):
  every = rows()
  chosen = {"all": every, "yes only": rows(("yes",)), "no only": rows(("no",)), "first 50": every[:50],
            "right only": [r for r in every if r["prediction"].strip().lower() == r["answer"].strip()]}[subset]
  assert len(chosen) >= 50 or subset == "right only"
  ours, theirs = score("pope", chosen), reference(chosen, lmms)
  assert {m: ours[m] for m in METRICS} == pytest.approx(theirs, abs=1e-9)


def test_each_row_equal_to_lmms_eval(lmms):
  for row in rows():
    ours = score("pope", [row])
    assert {m: ours[m] for m in METRICS} == pytest.approx(reference([row], lmms), abs=1e-9), row


def test_metric_names_are_the_task_yamls():
  assert list(METRICS) == lmms_eval_reference.metric_names("pope/pope.yaml")


@pytest.mark.parametrize("text, no", [
  ("No", True), ("no", True), ("No.", True), ("No, there is not.", True), ("There is not a dog.", True),
  ("There is no dog.", True), ("Yes", False), ("Yes.", False), ("yes, no", True), ("Yes. No.", False),
  ("NO", False), ("Not", False), ("No\nthere", False), ("nope", False), ("", False), ("I do not know", True),
  ("no,", True), ("A. no", False), ("cannot tell", False),
])
def test_llava_parsing(text, no):
  assert pope.llava_reads_no(text) is no


def test_llava_metrics_on_a_counted_confusion_matrix():
  """Truth yes: "Yes" (TP), "Yes." (TP), "NO" (read yes: TP), "No" (FN); truth no: "no" (TN),
  "Sure" (FP), " not really " (stripped, then "not": TN)."""
  answers = [("yes", "Yes"), ("yes", "Yes."), ("yes", "NO"), ("yes", "No"), ("no", "no"), ("no", "Sure"),
             ("no", " not really ")]
  metrics = score("pope", [{"answer": a, "prediction": p} for a, p in answers])
  true_pos, false_neg, true_neg, false_pos = 3, 1, 2, 1
  precision, recall = true_pos / (true_pos + false_pos), true_pos / (true_pos + false_neg)
  assert metrics["pope_llava_accuracy"] == pytest.approx((true_pos + true_neg) / 7)
  assert metrics["pope_llava_precision"] == pytest.approx(precision)
  assert metrics["pope_llava_recall"] == pytest.approx(recall)
  assert metrics["pope_llava_f1_score"] == pytest.approx(2 * precision * recall / (precision + recall))
  assert metrics["pope_llava_yes_ratio"] == pytest.approx(4 / 7)
  # lmms-eval's parsing on the same rows: only "Yes" and "no" are answers at all.
  assert metrics["pope_accuracy"] == pytest.approx(2 / 7) and metrics["pope_yes_ratio"] == pytest.approx(4 / 7)


def test_no_yes_predicted_gives_zero_not_a_division_error():
  metrics = score("pope", [{"answer": "yes", "prediction": "No"}, {"answer": "no", "prediction": "no"}])
  assert metrics["pope_llava_precision"] == 0 and metrics["pope_llava_f1_score"] == 0
  assert metrics["pope_precision"] == 0 and metrics["pope_f1_score"] == 0
