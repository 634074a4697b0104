"""TextVQA, VQAv2 and GQA scores equal lmms-eval's own (0.7.3) on crafted answers, row by row
and over all rows, to 1e-9.

The references are lmms-eval's `textvqa_process_results`, `vqav2_process_results_val` and,
for GQA (which has no function of its own), the generic generate-until path of
`lmms_eval/api/task.py` ported in `gqa_reference` (task.py cannot load without datasets and
torch): the answer stripped, then `exact_match_hf_evaluate` of `lmms_eval/api/metrics.py` with
gqa.yaml's own metric options; rows are averaged with metrics.py's `mean`.
"""

import copy

import lmms_eval_reference
import pytest
from lmms_eval_reference import cleaned
from scoring_cases import ANSWERS

from visregion_jax.benchmarks.scoring import evalai, score

TEXTVQA_ANSWERS = [
  ["yes"] * 10, ["no"] * 7 + ["yes"] * 3, ["2"] * 4 + ["two"] * 3 + ["3"] * 3,
  ["cat"] * 5 + ["the cat"] * 2 + ["a cat"] * 3, ["1,000"] * 5 + ["1000"] * 3 + ["one thousand"] * 2,
  ["coca-cola"] * 5 + ["coca cola"] * 4 + ["Coca Cola"], ["don't"] * 6 + ["dont"] * 4,
  ["st. louis"] * 3 + ["st louis"] * 3 + ["saint louis"] * 4, ["3.5"] * 2 + ["3.50"] * 2 + ["35"] * 6,
  ["it's"] * 5 + ["its"] * 5, ["café"] * 10, ["b"] + ["a"] * 9, ["u.s.a."] * 5 + ["usa"] * 5,
  ["red and white"] * 4 + ["red, white"] * 6, ["none"] * 2 + ["0"] * 2 + ["zero"] * 6,
]
EXTRA_ANSWERS = ["." * 40 + "yes", "a,b;c/d", "1,000,000 dogs", "(yes)", "yes?", "somebody'd", "somebodyd", "i'm",
                 "yes\x00", "yes.\x00."]
# "i\u0307stanbu": what NumPy's fixed-width lower case makes of "İstanbul" (one character longer).
GQA_ANSWERS = ["yes", "no", "cat", "2", "two", "coca-cola", "st. louis", "İstanbul", "i\u0307stanbu", "left",
               "red and white", "café", "Yes", "a cat", "U.S.A."]


@pytest.fixture(scope="module")
def lmms():
  with lmms_eval_reference.loaded() as load:
    yield load


def textvqa_rows() -> list:
  return [{"question_id": i, "question": "what is written?", "answers": list(answers), "prediction": pred}
          for i, (answers, pred) in enumerate((a, p) for a in TEXTVQA_ANSWERS for p in ANSWERS + EXTRA_ANSWERS)]


def vqav2_rows() -> list:
  rows = []
  for i, row in enumerate(textvqa_rows()):
    records = [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(row["answers"])]
    if i % 7 == 0:  # records equal as a whole: lmms-eval leaves all of them out together
      records = [{"answer": a} for a in row["answers"]]
    rows.append({"question_id": i, "question": "what?", "answers": records, "prediction": row["prediction"]})
  return rows


def gqa_rows() -> list:
  return [{"id": str(i), "question": "what?", "answer": answer, "prediction": pred}
          for i, (answer, pred) in enumerate((a, p) for a in GQA_ANSWERS for p in ANSWERS + EXTRA_ANSWERS + [a])]


def textvqa_reference(rows, lmms) -> list:
  """Each row's `exact_match` (a copy: lmms-eval normalises the answers in place)."""
  utils = lmms("tasks.textvqa.utils")
  return [utils.textvqa_process_results(copy.deepcopy(r), [cleaned(r["prediction"], lmms)])["exact_match"]
          for r in rows]


def vqav2_reference(rows, lmms) -> list:
  utils = lmms("tasks.vqav2.utils")
  return [utils.vqav2_process_results_val(copy.deepcopy(r), [cleaned(r["prediction"], lmms)])["exact_match"]
          for r in rows]


def gqa_reference(rows, lmms) -> list:
  metrics = lmms("api.metrics")
  options = {k: v for k, v in lmms_eval_reference.task_config("gqa/gqa.yaml")["metric_list"][0].items()
             if k not in ("metric", "aggregation", "higher_is_better")}
  assert options == {"ignore_case": True, "ignore_punctuation": True}
  return [metrics.exact_match_hf_evaluate(predictions=[cleaned(r["prediction"], lmms).strip()],
                                          references=[r["answer"]], **options)["exact_match"] for r in rows]


CASES = [("textvqa_val", textvqa_rows, textvqa_reference), ("vqav2_val", vqav2_rows, vqav2_reference),
         ("gqa", gqa_rows, gqa_reference)]


@pytest.mark.parametrize("task, rows, reference", CASES, ids=[c[0] for c in CASES])
def test_equal_to_lmms_eval(task, rows, reference, lmms):
  rows = rows()
  assert len(rows) >= 50
  expected = reference(rows, lmms)
  for row, value in zip(rows, expected):
    assert score(task, [row])["exact_match"] == pytest.approx(value, abs=1e-9), row
  total = score(task, rows)["exact_match"]
  assert total == pytest.approx(lmms("api.metrics").mean(expected), abs=1e-9)
  assert 0 < total < 1  # the cases score some right and some wrong


def test_some_rows_score_between_zero_and_one(lmms):
  """The min(matches / 3, 1) averaged over left-out answers gives partial credit, not just 0 or 1."""
  scores = {score("textvqa_val", [r])["exact_match"] for r in textvqa_rows()}
  assert {0.0, 1.0} < scores and any(0 < s < 1 for s in scores)


def test_normalisation_equals_the_evalai_processor(lmms):
  processor = lmms("tasks._task_utils.vqa_eval_metric").EvalAIAnswerProcessor()
  for text in ANSWERS + EXTRA_ANSWERS + [a for answers in TEXTVQA_ANSWERS for a in answers]:
    assert evalai.normalise_textvqa(text) == processor(text), text
    plain = text.replace("\n", " ").replace("\t", " ").strip()
    assert evalai.normalise_vqav2(text) == processor.process_digit_article(processor.process_punctuation(plain)), text


def test_contraction_table_is_the_processors(lmms):
  """Ours is built from the contracted words; theirs less its entries that never apply (keys
  with capitals, since words are lower-cased first, and words mapped to themselves)."""
  table = lmms("tasks._task_utils.vqa_eval_metric").EvalAIAnswerProcessor.CONTRACTIONS
  assert evalai.CONTRACTIONS == {k: v for k, v in table.items() if k == k.lower() and k != v}
