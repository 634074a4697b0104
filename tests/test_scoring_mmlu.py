"""MMLU accuracy equals lmms-eval's (0.7.3) to 1e-9, per subject and over all.

lmms-eval's `mmlu` (taken from lm-evaluation-harness) is a multiple_choice task scored inside
`ConfigurableTask.process_results` of lmms_eval/api/task.py, which cannot load without
datasets and torch; `reference` ports its three lines for this case (the choice of least loss,
lmms-eval's models return losses, is right when it is the answer index) and aggregates with
lmms_eval/api/metrics.py's own `mean` per subject and `aggregate_subtask_metrics` up the
groups its yamls define (subject -> stem / humanities / social sciences / other -> mmlu,
weighted by size).
"""

import glob
import os

import lmms_eval_reference
import numpy as np
import pytest

from visregion_jax.benchmarks.scoring import score
from visregion_jax.errors import VisRegionError


@pytest.fixture(scope="module")
def lmms():
  with lmms_eval_reference.loaded() as load:
    yield load


@pytest.fixture(scope="module")
def subject_groups() -> dict:
  """subject -> its group task, from lmms-eval's per-subject yamls."""
  groups = {}
  for path in glob.glob(os.path.join(lmms_eval_reference.root(), "tasks", "mmlu", "default", "mmlu_*.yaml")):
    config = lmms_eval_reference.task_config(os.path.join("mmlu", "default", os.path.basename(path)))
    groups[config["dataset_name"]] = config["tag"].removesuffix("_tasks")
  return groups


def rows(subjects: list, seed=0) -> list:
  """Questions with random per-letter losses; the prediction is the letter of least loss."""
  rng = np.random.default_rng(seed)
  out = []
  for s, subject in enumerate(subjects):
    for _ in range(3 + s % 5):
      losses = rng.normal(size=4)
      out.append({"question": "?", "subject": subject, "choices": ["w", "x", "y", "z"],
                  "answer": int(rng.integers(4)), "losses": losses.tolist(), "prediction": "ABCD"[np.argmin(losses)]})
  return out


def reference(rows, lmms, groups) -> dict:
  metrics = lmms("api.metrics")
  per_subject = {}
  for r in rows:
    per_subject.setdefault(r["subject"], []).append(1.0 if np.argmin(r["losses"]) == r["answer"] else 0.0)
  accuracy = {s: metrics.mean(v) for s, v in per_subject.items()}
  group_results = {}
  for group in sorted(set(groups[s] for s in per_subject)):
    members = [s for s in per_subject if groups[s] == group]
    sizes = [len(per_subject[s]) for s in members]
    group_results[group] = (metrics.aggregate_subtask_metrics([accuracy[s] for s in members], sizes), sum(sizes))
  overall = metrics.aggregate_subtask_metrics([a for a, _ in group_results.values()],
                                              [n for _, n in group_results.values()])
  return {"acc": overall, **{f"mmlu_{s}/acc": accuracy[s] for s in sorted(accuracy)}}


def test_equal_to_lmms_eval(lmms, subject_groups):
  subjects = sorted(subject_groups)
  assert len(subjects) == 57
  for chosen in (subjects, subjects[::5], subjects[:1]):
    crafted = rows(chosen)
    assert len(crafted) >= 50 or len(chosen) == 1
    ours, theirs = score("mmlu", crafted), reference(crafted, lmms, subject_groups)
    assert ours.keys() == theirs.keys()
    assert ours == pytest.approx(theirs, abs=1e-9)


def test_metric_name_is_the_task_yamls():
  assert lmms_eval_reference.metric_names("mmlu/default/_default_template_yaml") == ["acc"]


@pytest.mark.parametrize("prediction", ["", "a", "(A)", "A.", "E", " B", "The answer is C"])
def test_prediction_must_be_a_ranked_letter(prediction):
  with pytest.raises(VisRegionError, match="row 1: expected field 'prediction' to be the letter A, B, C or D"):
    score("mmlu", [{"subject": "anatomy", "answer": 0, "prediction": prediction}])
