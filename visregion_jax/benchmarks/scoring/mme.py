"""MME as lmms-eval scores it: `mme_perception_score` (0..2000) and `mme_cognition_score` (0..800).

Each image (`question_id`, MME's image path) has two yes/no questions. A category scores
acc + acc+ in percent: acc the share of right answers, acc+ the share of images with both
right; a total is the sum over its categories (10 perception, 4 cognition). An answer is
parsed as lmms-eval does: lower-cased, stripped, periods dropped; "yes"/"no", "y"/"n", else
"yes" or "no" inside the first four characters ("yes" first); anything else is wrong. A
total whose categories have no rows is left out, as lmms-eval leaves it out.
"""

from visregion_jax.benchmarks.scoring import fields
from visregion_jax.benchmarks.scoring.response import without_reasoning
from visregion_jax.errors import VisRegionError

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def parse_yes_no(text: str) -> str:
  """"yes", "no" or "other"."""
  text = text.lower().strip().replace(".", "")
  if text in ("yes", "no"):
    return text
  if len(text) == 1:
    return {"y": "yes", "n": "no"}.get(text, "other")
  head = text[:4]
  return "yes" if "yes" in head else "no" if "no" in head else "other"


def _category_score(images: dict) -> float:
  """Mean over the category's images of acc + acc+ (percent); each image has two 0/1 scores."""
  total = 0.0
  for scores in images.values():
    total += sum(scores) / len(scores) * 100.0 + (sum(scores) == 2) * 100.0
  return total / len(images)


def mme(rows: list, where: list) -> dict:
  categories = {}  # category -> image -> [score, ...], in order of first appearance
  first_row = {}
  for row, w in zip(rows, where):
    category = fields.field(row, "category", w, str, "the MME category")
    if category not in PERCEPTION + COGNITION:
      raise VisRegionError(w, f"expected field 'category' to be one of MME's {', '.join(PERCEPTION + COGNITION)}; "
                           f"got {category!r}")
    image = fields.field(row, "question_id", w, str, "the image both questions of a pair share")
    truth = fields.yes_no(row, "answer", w, drop=".")
    right = parse_yes_no(without_reasoning(fields.prediction(row, w))) == truth
    categories.setdefault(category, {}).setdefault(image, []).append(1.0 if right else 0.0)
    first_row.setdefault((category, image), w)
  for (category, image), w in first_row.items():
    if len(categories[category][image]) != 2:
      raise VisRegionError(w, f"expected two questions on image {image!r} (MME scores pairs), "
                           f"found {len(categories[category][image])}")
  scores = {c: _category_score(images) for c, images in categories.items()}
  totals = {}
  for name, members in (("mme_perception_score", PERCEPTION), ("mme_cognition_score", COGNITION)):
    if any(c in scores for c in members):
      totals[name] = sum(score for c, score in scores.items() if c in members)
  return totals
