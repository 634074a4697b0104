"""MMBench-EN dev, circular and rule-based, equals lmms-eval's own `mmbench_en_dev_static`
scoring (0.7.3) to 1e-9.

The reference is its tasks/mmbench/en_utils.py: `mmbench_process_results` per row and
`mmbench_aggregate_dev_results_static` over them (the MMBench_Evaluator's circular
evaluation with eval_method="static", run on pandas as lmms-eval runs it; it writes a
results file, here into a temporary directory). The letter readers are also compared one
by one with the evaluator's `can_infer_option` / `can_infer_text` and with
`extract_mcq_answer` of tasks/_task_utils/mcq_extract.py.
"""

import types

import lmms_eval_reference
import pytest
from lmms_eval_reference import cleaned
from scoring_cases import ANSWERS

from visregion_jax.benchmarks.scoring import option_letters, score
from visregion_jax.errors import VisRegionError

pytest.importorskip("pandas", reason="lmms-eval's MMBench evaluator runs on pandas (requirements-dev.txt)")

TEXTS = ["cat", "dog", "a bird", "fish"]
MORE_ANSWERS = ["a cat", "The dog", "It is a cat and a dog", "A cat is sitting there", "B is right, not A",
                "(A) or (B)", "Failed to obtain answer via API A", "nan", "A: cat", "option (D).", "the answer is: D",
                "fish", "A bird", "C. a bird", "I think B", "the answer is D, B or D", "I'd say (A) then B",
                "B or maybe A; the answer is C"]
COPY = 1_000_000


@pytest.fixture(scope="module")
def lmms():
  with lmms_eval_reference.loaded() as load:
    yield load


def rows(questions=40) -> list:
  """Each question with 2-4 options and its rotated copies (index + k * 1e6); some answered
  right by letter, some by the option's text, the rest crafted."""
  answers = ANSWERS + MORE_ANSWERS
  out = []
  for q in range(questions):
    n = 2 + q % 3
    for k in range(n):
      texts = TEXTS[:n][k:] + TEXTS[:n][:k]
      letter = "ABCD"[texts.index(TEXTS[q % n])]
      pred = {0: letter, 1: TEXTS[q % n]}.get(q % 4, answers[(q * 5 + k) % len(answers)])
      out.append({"index": q + k * COPY, "question": "What is it?", "hint": None, "answer": letter,
                  **{c: (texts[i] if i < n else None) for i, c in enumerate("ABCD")}, "category": "object",
                  "L2-category": "perception", "source": "crafted", "split": "dev", "prediction": pred})
  return out


def reference(rows, lmms, tmp_path) -> dict:
  utils = lmms("tasks.mmbench.en_utils")
  results = [utils.mmbench_process_results(r, [cleaned(r["prediction"], lmms)])["gpt_eval_score"] for r in rows]
  return {"gpt_eval_score": utils.mmbench_aggregate_dev_results_static(results, types.SimpleNamespace(
    output_path=str(tmp_path)))}


@pytest.mark.parametrize("questions", [40, 7, 1])
def test_equal_to_lmms_eval(questions, lmms, tmp_path):
  chosen = rows(questions)
  assert len(chosen) >= 50 or questions < 40
  ours, theirs = score("mmbench_en_dev", chosen), reference(chosen, lmms, tmp_path)
  assert ours == pytest.approx(theirs, abs=1e-9)
  assert questions < 40 or 0 < ours["gpt_eval_score"] < 100


def test_each_question_with_each_answer(lmms, tmp_path):
  """A question and its copies all answered with one crafted answer, for every answer."""
  for pred in ANSWERS + MORE_ANSWERS:
    question = [dict(r, prediction=pred) for r in rows(3)[-4:]]  # question 2: four options, four copies
    assert score("mmbench_en_dev", question) == pytest.approx(reference(question, lmms, tmp_path), abs=1e-9), pred


def test_letter_readers_equal_lmms_evals(lmms):
  evaluator = lmms("tasks.mmbench.en_utils").mmbench_evaluator
  extract = lmms("tasks._task_utils.mcq_extract").extract_mcq_answer
  options = dict(zip("ABCD", TEXTS))
  for text in ANSWERS + MORE_ANSWERS:
    assert (option_letters.letter_as_token(text) or False) == evaluator.can_infer_option(text), text
    assert (option_letters.letter_by_option_text(text, options) or False) == evaluator.can_infer_text(
      text, dict(options)), text
    for letters in (["A", "B", "C", "D"], ["A", "B"], []):
      assert option_letters.extracted_letter(text, letters) == extract(text, choices=letters), (text, letters)


def test_metric_name_is_the_task_yamls():
  assert lmms_eval_reference.metric_names("mmbench/mmbench_en_dev_static.yaml")[0] == "gpt_eval_score"
  assert lmms_eval_reference.metric_names("mmbench/mmbench_en_dev.yaml")[0] == "gpt_eval_score"


def test_a_copy_without_its_question_is_bad_input():
  copy_only = [r for r in rows(2) if r["index"] != 1]
  with pytest.raises(VisRegionError, match="expected question 1, of which index 1000001 is a rotated copy"):
    score("mmbench_en_dev", copy_only)
