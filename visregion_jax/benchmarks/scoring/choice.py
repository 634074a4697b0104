"""ScienceQA-IMG and SEED-Bench: the option letter read from the answer by lmms-eval's rules.

No GPT judge is asked, here or in lmms-eval for these two tasks: the letter is read by rule.
ScienceQA-IMG (`exact_match`, 0..1) is right when the whole answer is the letter (any case)
or starts with an upper-case letter and a period ("B. the moon") whose letter is right;
"(B)" or "The answer is B" are wrong. SEED-Bench (`seed_image`, `seed_video`, `seed_all`,
0..1) takes the first character of the answer and compares it with the letter, any case.
"""

from visregion_jax.benchmarks.scoring import fields
from visregion_jax.benchmarks.scoring.response import without_reasoning
from visregion_jax.errors import VisRegionError

_SEED_TYPES = ("image", "video")


def scienceqa_row(row: dict, where: str) -> float:
  choices = fields.field(row, "choices", where, list, "the options, in letter order")
  answer = fields.field(row, "answer", where, int, "the index of the right option in 'choices'")
  if not 0 <= answer < len(choices):
    raise VisRegionError(where, f"expected field 'answer' to index one of the {len(choices)} choices, got {answer}")
  target = chr(ord("a") + answer)
  pred = without_reasoning(fields.prediction(row, where))
  if pred.lower() == target:
    return 1.0
  if len(pred) >= 2 and pred[0].isupper() and pred[1] == ".":
    return float(pred[0].lower() == target)
  return 0.0


def scienceqa_img(rows: list, where: list) -> dict:
  scores = [scienceqa_row(r, w) for r, w in zip(rows, where)]
  return {"exact_match": sum(scores) / len(scores)}


def seedbench(rows: list, where: list) -> dict:
  right = {kind: [] for kind in _SEED_TYPES}
  for row, w in zip(rows, where):
    kind = fields.field(row, "data_type", w, str, "image or video")
    if kind not in _SEED_TYPES:
      raise VisRegionError(w, f"expected field 'data_type' to be image or video, got {kind!r}")
    answer = fields.field(row, "answer", w, str, "the right option's letter")
    letter = without_reasoning(fields.prediction(row, w))[:1]
    right[kind].append(letter.lower() == answer.lower().strip())
  every = right["image"] + right["video"]
  metrics = {f"seed_{kind}": sum(r) / len(r) for kind, r in right.items() if r}
  return {**metrics, "seed_all": sum(every) / len(every)}
