"""MME perception and cognition scores equal lmms-eval's own (0.7.3) to 1e-9.

The reference is `mme_process_results` and `mme_aggregate_results` of its tasks/mme/utils.py
(acc + acc+ per category, summed per perception / cognition), and its `parse_pred_ans` for the
yes/no reading of each crafted answer.
"""

import lmms_eval_reference
import pytest
from lmms_eval_reference import cleaned
from scoring_cases import ANSWERS

from visregion_jax.benchmarks.scoring import mme, score
from visregion_jax.errors import VisRegionError


@pytest.fixture(scope="module")
def lmms():
  with lmms_eval_reference.loaded() as load:
    yield load


def rows(categories=mme.PERCEPTION + mme.COGNITION, images=3) -> list:
  """Per category `images` images with a yes and a no question; the first image's answers
  are right (so acc+ counts), the others crafted."""
  out = []
  for c, category in enumerate(categories):
    for image in range(images):
      for q, truth in enumerate(("Yes", "No")):
        pred = f"{truth}." if image == 0 else ANSWERS[(c * 7 + image * 3 + q) % len(ANSWERS)]
        out.append({"question_id": f"{category}/{image:04d}.png", "question": "Is it? Please answer yes or no.",
                    "answer": truth, "category": category, "prediction": pred})
  return out


def reference(rows, lmms) -> dict:
  utils = lmms("tasks.mme.utils")
  by_metric = {}
  for r in rows:
    for metric, result in utils.mme_process_results(r, [cleaned(r["prediction"], lmms)]).items():
      by_metric.setdefault(metric, []).append(result)
  return {metric: utils.mme_aggregate_results(results) for metric, results in by_metric.items()}


@pytest.mark.parametrize("categories", [mme.PERCEPTION + mme.COGNITION, mme.PERCEPTION, mme.COGNITION, ("OCR",)],
                         ids=["all", "perception", "cognition", "one category"])
def test_equal_to_lmms_eval(categories, lmms):
  chosen = rows(categories, images=max(3, -(-25 // len(categories))))
  assert len(chosen) >= 50
  ours, theirs = score("mme", chosen), reference(chosen, lmms)
  assert ours.keys() == theirs.keys()
  assert ours == pytest.approx(theirs, abs=1e-9)


def test_every_crafted_answer_on_its_own_pair(lmms):
  """Each answer of the cases twice on one image (truth yes, then no), one pair at a time."""
  for pred in ANSWERS:
    pair = [{"question_id": "count/1.png", "answer": t, "category": "count", "prediction": pred} for t in ("Yes", "No")]
    assert score("mme", pair) == pytest.approx(reference(pair, lmms), abs=1e-9), pred


def test_parsing_equals_lmms_evals(lmms):
  utils = lmms("tasks.mme.utils")
  for text in ANSWERS:
    assert mme.parse_yes_no(text) == utils.parse_pred_ans(text), text


def test_metric_names_and_categories_are_lmms_evals(lmms):
  assert lmms_eval_reference.metric_names("mme/mme.yaml") == ["mme_perception_score", "mme_cognition_score"]
  groups = lmms("tasks.mme.utils").eval_type_dict
  assert (list(mme.PERCEPTION), list(mme.COGNITION)) == (groups["Perception"], groups["Cognition"])


def test_all_right_is_the_maximum():
  perfect = [dict(r, prediction=r["answer"]) for r in rows()]
  assert score("mme", perfect) == {"mme_perception_score": 2000.0, "mme_cognition_score": 800.0}


def test_an_image_needs_its_pair():
  with pytest.raises(VisRegionError, match=r"row 3: expected two questions on image 'count/1.png'"):
    score("mme", [{"question_id": "count/0.png", "answer": "Yes", "category": "count", "prediction": "yes"},
                  {"question_id": "count/0.png", "answer": "No", "category": "count", "prediction": "no"},
                  {"question_id": "count/1.png", "answer": "No", "category": "count", "prediction": "no"}])
