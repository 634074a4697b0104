"""The synthetic held-out questions written in GQA's LLaVA-1.5 evaluation layout.

So the demo's model can be evaluated by the benchmark path (`eval.tasks=gqa`, and
`python -m visregion_jax.evaluate` on its export) on the very questions its held-out
accuracy uses, and the two paths be compared: the layout is LLaVA's
`llava_gqa_testdev_balanced.jsonl` (question id, image, text with LLaVA's short-answer
instruction), `data/testdev_balanced_questions.json` (question, answer, imageId) and
the images under `data/images/`, which benchmarks/llava_joins.py reads as it reads
GQA's own copy.
"""

import json
import os

from visregion_jax.benchmarks.prompts import SHORT_ANSWER
from visregion_jax.data.sources import JsonSource
from visregion_jax.publish import published_directory

IMAGE_TAG = "<image>\n"


def write_gqa_layout(eval_json: str, image_root: str, out: str) -> str:
  """The image questions of `eval_json` (LLaVA-format, one human and one gpt turn) in GQA's
  LLaVA layout under `out`, in their order; returns `out`."""
  source = JsonSource(eval_json, image_root)
  with published_directory(out) as partial:
    images = os.path.join(partial, "data", "images")
    os.makedirs(images)
    lines, answers = [], {}
    for index, sample in enumerate(source.samples):
      if not sample.get("image"):
        continue
      question = sample["conversations"][0]["value"].removeprefix(IMAGE_TAG)
      image_id = os.path.splitext(os.path.basename(sample["image"]))[0]
      with open(os.path.join(images, image_id + ".png"), "wb") as f:
        f.write(source[index]["images"][0])  # read inside the image root, as training reads it
      lines.append({"question_id": sample["id"], "image": image_id + ".png", "text": f"{question}\n{SHORT_ANSWER}"})
      answers[sample["id"]] = {"question": question, "answer": sample["conversations"][1]["value"],
                               "imageId": image_id}
    with open(os.path.join(partial, "llava_gqa_testdev_balanced.jsonl"), "w", encoding="utf-8") as f:
      f.writelines(json.dumps(line) + "\n" for line in lines)
    with open(os.path.join(partial, "data", "testdev_balanced_questions.json"), "w", encoding="utf-8") as f:
      json.dump(answers, f, indent=1)
  return out
