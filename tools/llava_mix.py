"""A synthetic instruction set whose composition follows LLaVA-665K (LLaVA-1.5's mix).

Published numbers: the component sizes of LLaVA-1.5's instruction mix, Table 7 of Liu
et al., "Improved Baselines with Visual Instruction Tuning" (CVPR 2024): LLaVA 158K,
ShareGPT 40K (text-only), VQAv2 83K, GQA 72K, OKVQA 9K, OCRVQA 80K, A-OKVQA 66K,
TextCaps 22K, RefCOCO 48K, VG 86K. Those are the sampling weights here.

Modelled, not published: the lengths. LLaVA-1.5 merges the questions of one image
into one multi-turn conversation, so each component is a number of turns and a
user / assistant length per turn, in tokens at LLaVA-1.5's 2048-token scale, drawn
from log-normals whose medians below are our estimates of each source's typical turn
(short-answer VQA: a question and "Answer the question using a single word or
phrase." then a word; LLaVA's own conversations and ShareGPT: long answers); then
every length is scaled by `max_length / 2048`, so the mix keeps its shape at the
benchmark's `max_length`. The bench prints the token lengths it actually got.

Text is random common words (about one token each), images are random PNGs.
"""

import json
import os

import numpy as np
from PIL import Image

# name: (samples in thousands, has image, turns (min, max), user median, assistant median)
COMPONENTS = {
    "llava_conversations": (58, True, (2, 5), 20, 90),
    "llava_detail": (23, True, (1, 1), 15, 160),
    "llava_reasoning": (77, True, (1, 1), 30, 190),
    "sharegpt": (40, False, (2, 6), 60, 260),
    "vqav2": (83, True, (3, 6), 20, 2),
    "gqa": (72, True, (4, 8), 22, 2),
    "okvqa": (9, True, (1, 2), 22, 2),
    "ocrvqa": (80, True, (4, 6), 22, 5),
    "a_okvqa": (66, True, (1, 2), 40, 2),
    "textcaps": (22, True, (1, 1), 15, 15),
    "refcoco": (48, True, (3, 6), 25, 12),
    "vg": (86, True, (3, 6), 25, 12),
}
SPREAD = 0.5  # log-normal sigma of every turn length
WORDS = ("the a of and to in is it that on for with as was by this at be from or are an which what "
         "picture image color red blue green left right small large people man woman car street sign "
         "table water tree building sky light white black two three one number text word answer").split()


def _words(rng, n: int) -> str:
  return " ".join(rng.choice(WORDS, size=max(1, n)))


def _length(rng, median: float, scale: float) -> int:
  return max(1, int(round(rng.lognormal(np.log(median * scale), SPREAD))))


def write_mix(out_dir: str, num_samples: int, max_length: int, image_size: int, seed: int = 0) -> dict:
  """Writes `train.json` and its images into `out_dir`; returns {component: samples}."""
  rng = np.random.RandomState(seed)
  names = sorted(COMPONENTS)
  weights = np.array([COMPONENTS[n][0] for n in names], np.float64)
  picks = rng.choice(len(names), size=num_samples, p=weights / weights.sum())
  os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
  scale = max_length / 2048
  samples, counts = [], {}
  for i, k in enumerate(picks):
    name = names[k]
    _, has_image, (low, high), user, assistant = COMPONENTS[name]
    counts[name] = counts.get(name, 0) + 1
    turns = []
    for t in range(rng.randint(low, high + 1)):
      question = _words(rng, _length(rng, user, scale))
      turns += [{"from": "human", "value": ("<image>\n" if has_image and t == 0 else "") + question},
                {"from": "gpt", "value": _words(rng, _length(rng, assistant, scale))}]
    sample = {"id": f"{name}-{i}", "conversations": turns}
    if has_image:
      path = os.path.join("images", f"{i}.png")
      Image.fromarray(rng.randint(0, 256, (image_size, image_size, 3), np.uint8)).save(
          os.path.join(out_dir, path))
      sample["image"] = path
    samples.append(sample)
  with open(os.path.join(out_dir, "train.json"), "w", encoding="utf-8") as f:
    json.dump(samples, f)
  return counts
