"""POPE under two answer parsings, lmms-eval's and LLaVA-1.5's, all values in 0..1.

lmms-eval (`pope_accuracy`, `pope_precision`, `pope_recall`, `pope_f1_score`,
`pope_yes_ratio`) counts a prediction as an answer only when the whole text, lower-cased and
stripped, is "yes" or "no": "Yes." or "No, there is not." are wrong either way, they count
as neither a false positive nor a false negative. Its `pope_yes_ratio` is the share of "yes"
in the ground truth, not in the predictions.

LLaVA-1.5's `eval_pope.py` (ours-only names `pope_llava_*`) reads every text as an answer:
the first sentence (up to a period), commas dropped, split on spaces; "no", "No" or "not" as
a word makes it "no", anything else "yes" (so "NO" and "No\\n..." are yes). Its yes-ratio is
the share of predicted "yes". Its script scores each category (adversarial, popular, random)
separately and divides by zero when nothing is predicted "yes"; here both parsings are scored
over all the rows given, and a ratio with a zero denominator is 0, as lmms-eval does.
"""

from visregion_jax.benchmarks.scoring import fields
from visregion_jax.benchmarks.scoring.response import without_reasoning


def llava_reads_no(text: str) -> bool:
  """LLaVA-1.5's parsing of a stripped answer: True for "no"."""
  words = text.split(".")[0].replace(",", "").split(" ")
  return "No" in words or "not" in words or "no" in words


def _ratio(part: int, whole: int) -> float:
  return part / whole if whole else 0


def _precision_recall_f1(true_pos: int, false_pos: int, false_neg: int) -> tuple:
  precision, recall = _ratio(true_pos, true_pos + false_pos), _ratio(true_pos, true_pos + false_neg)
  return precision, recall, _ratio(2 * precision * recall, precision + recall)


def _lmms_eval_metrics(pairs: list) -> dict:
  """pairs: (parsed prediction, ground truth), the prediction any text."""
  true_pos = sum(p == "yes" and g == "yes" for p, g in pairs)
  precision, recall, f1 = _precision_recall_f1(true_pos, sum(p == "yes" and g == "no" for p, g in pairs),
                                               sum(p == "no" and g == "yes" for p, g in pairs))
  return {"pope_accuracy": sum(p == g for p, g in pairs) / len(pairs), "pope_precision": precision,
          "pope_recall": recall, "pope_f1_score": f1,
          "pope_yes_ratio": _ratio(sum(g == "yes" for _, g in pairs), len(pairs))}


def _llava_metrics(pairs: list) -> dict:
  """pairs: (predicted yes, ground-truth yes)."""
  true_pos = sum(p and g for p, g in pairs)
  precision, recall, f1 = _precision_recall_f1(true_pos, sum(p and not g for p, g in pairs),
                                               sum(g and not p for p, g in pairs))
  return {"pope_llava_accuracy": sum(p == g for p, g in pairs) / len(pairs), "pope_llava_precision": precision,
          "pope_llava_recall": recall, "pope_llava_f1_score": f1,
          "pope_llava_yes_ratio": sum(p for p, _ in pairs) / len(pairs)}


def pope(rows: list, where: list) -> dict:
  truths = [fields.yes_no(r, "answer", w) for r, w in zip(rows, where)]
  texts = [fields.prediction(r, w) for r, w in zip(rows, where)]
  lmms_eval = [(without_reasoning(t).lower().strip(), g) for t, g in zip(texts, truths)]
  # LLaVA's answer files hold the decoded text stripped, with no reasoning-tag handling.
  llava = [(not llava_reads_no(t.strip()), g == "yes") for t, g in zip(texts, truths)]
  return {**_lmms_eval_metrics(lmms_eval), **_llava_metrics(llava)}
