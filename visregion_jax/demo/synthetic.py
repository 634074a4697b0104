"""A small synthetic image-QA set in the LLaVA on-disk format, for the demo and tests.

The demo trains on files a user could have written (JSON lists plus an images
folder), so it runs the same loading code as real data. Four image tasks have short
canonical answers, so accuracy is an exact match (`answer_matches`) and can be
compared with guessing (`chance_accuracy`):

  digits    "What digit is shown in the image?"    -> "7"  (scikit-learn's 8x8 digits)
  count     "How many shapes are in the image?"    -> "3"  (1-5 separate shapes)
  colour    "What colour is the circle?"           -> "red" (plus maybe a smaller
            distractor of another kind and colour)
  position  "Is the square on the left or the right?" -> "left"

Eval scenes come from their own random stream and eval digits from a fixed index
range of the 1797 digits that train never uses, so eval measures generalisation.
Two text-only files (first sentences of Python standard-library docstrings) measure
whether the language model keeps its text ability.

The digits are read from the CSV that ships inside the scikit-learn package,
without importing it; without scikit-learn installed this raises `VisRegionError`.
The text set depends on the Python version, which the manifest records.
"""

import collections
import gzip
import importlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image, ImageDraw

from visregion_jax.demo.install import install_directory
from visregion_jax.errors import VisRegionError
from visregion_jax.evaluation import sample_task

FORMAT_VERSION = 1
TASKS = ("digits", "count", "colour", "position")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (240, 210, 40)}
BACKGROUNDS = ((0, 0, 0), (255, 255, 255), (128, 128, 128))
SHAPES = ("circle", "square", "triangle")
MIN_IMAGE_SIZE = 48  # smaller images fit five separate shapes only after many retries
# Digits [0, DIGITS_EVAL_START) feed train, the rest eval: never the same image in both.
DIGITS_EVAL_START = 1440
NUM_DIGITS = 1797

_QUESTIONS = {
    "digits": ("What digit is shown in the image?", "Which digit is this?",
               "What number from 0 to 9 is written here?"),
    "count": ("How many shapes are in the image?", "How many shapes can you see?",
              "Count the shapes in the picture."),
    "colour": ("What colour is the {shape}?", "What color is the {shape}?",
               "Which colour does the {shape} have?"),
    "position": ("Is the {shape} on the left or the right?",
                 "Is the {shape} on the left side or the right side of the image?",
                 "Where is the {shape}: left or right?"),
    "text": ("What does the Python function `{name}` do?", "In Python, what does `{name}` do?",
             "Describe in one sentence what the Python function `{name}` does."),
}
# Platform-independent standard-library modules, so the text set depends only on the
# Python version.
_TEXT_MODULES = (
    "base64", "bisect", "calendar", "cmath", "colorsys", "copy", "csv", "datetime", "difflib",
    "fnmatch", "fractions", "functools", "glob", "gzip", "heapq", "html", "inspect", "ipaddress",
    "itertools", "json", "keyword", "math", "mimetypes", "operator", "pickle", "posixpath",
    "pprint", "quopri", "random", "re", "shlex", "statistics", "string", "struct", "textwrap",
    "tokenize", "types", "typing", "unicodedata", "urllib.parse", "uuid", "zlib")
_STREAMS = {"train": 0, "eval": 1, "text": 2}
def _check_int(name: str, value, minimum: int):
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise VisRegionError(name, f"expected an integer >= {minimum}, got {value!r}")


def _load_digits() -> tuple:
  """(images [1797, 8, 8] in 0..16, labels [1797]) from scikit-learn's bundled CSV."""
  spec = importlib.util.find_spec("sklearn")
  if spec is None or not spec.submodule_search_locations:
    raise VisRegionError("scikit-learn", "needed for the digits images (pip install scikit-learn)")
  path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
  try:
    with gzip.open(path, "rt") as f:
      table = np.loadtxt(f, delimiter=",", dtype=np.int64)
  except (OSError, ValueError) as e:
    raise VisRegionError(path, f"expected scikit-learn's digits CSV ({e})") from None
  if table.shape != (NUM_DIGITS, 65):
    raise VisRegionError(path, f"expected {NUM_DIGITS} rows of 65 values, got {table.shape}")
  return table[:, :64].reshape(-1, 8, 8), table[:, 64]


def _balanced(rng, options, count: int) -> list:
  """`count` draws covering the options equally (up to one), in random order."""
  return [options[i] for i in rng.permutation(np.arange(count) % len(options))]


class _Canvas:
  """One image being drawn; shapes are kept apart so each is its own connected blob."""

  def __init__(self, size: int, background: tuple):
    self.size = size
    self.image = Image.new("RGB", (size, size), background)
    self.draw = ImageDraw.Draw(self.image)
    self.boxes = []

  @staticmethod
  def outline(shape: str, cx: float, cy: float, r: float) -> list:
    """Polygon points; sizes are chosen so the three kinds have similar areas."""
    if shape == "circle":
      angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
      return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles]
    if shape == "square":
      h = 0.85 * r
      return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    t = 1.3 * r
    w = t * np.sqrt(3) / 2
    return [(cx, cy - t), (cx + w, cy + t / 2), (cx - w, cy + t / 2)]

  def try_place(self, rng, shape: str, r: float, colour: tuple, x_range=None) -> bool:
    """Draws the shape at a random free spot (centre x within `x_range`) if one is found."""
    for _ in range(100):
      lo, hi = x_range or (0, self.size)
      cx, cy = rng.uniform(lo, hi), rng.uniform(0, self.size)
      points = self.outline(shape, cx, cy, r)
      xs, ys = [p[0] for p in points], [p[1] for p in points]
      box = (min(xs) - 2, min(ys) - 2, max(xs) + 2, max(ys) + 2)  # a 2 px gap to others
      if box[0] < 1 or box[1] < 1 or box[2] > self.size - 2 or box[3] > self.size - 2:
        continue
      if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
             for b in self.boxes):
        continue
      self.boxes.append(box)
      self.draw.polygon(points, fill=colour)
      return True
    return False


def _background(rng) -> tuple:
  return BACKGROUNDS[rng.integers(len(BACKGROUNDS))]


def _colour(rng) -> tuple:
  return COLOURS[list(COLOURS)[rng.integers(len(COLOURS))]]


def _render_count(rng, size: int, count: int) -> Image.Image:
  while True:  # a crowded layout is retried from scratch
    canvas = _Canvas(size, _background(rng))
    if all(canvas.try_place(rng, SHAPES[rng.integers(3)], rng.uniform(0.07, 0.11) * size,
                            _colour(rng)) for _ in range(count)):
      return canvas.image


def _render_colour(rng, size: int, shape: str, colour: str) -> Image.Image:
  """The named shape is always the biggest blob; the distractor differs in kind and colour."""
  while True:
    canvas = _Canvas(size, _background(rng))
    if not canvas.try_place(rng, shape, rng.uniform(0.16, 0.24) * size, COLOURS[colour]):
      continue
    if rng.random() < 0.5:
      other_shape = [s for s in SHAPES if s != shape][rng.integers(2)]
      other_colour = [c for c in COLOURS if c != colour][rng.integers(3)]
      if not canvas.try_place(rng, other_shape, rng.uniform(0.08, 0.11) * size,
                              COLOURS[other_colour]):
        continue
    return canvas.image


def _render_position(rng, size: int, shape: str, side: str) -> Image.Image:
  """The centre lies in the outer 35% of the named side, so the answer is never borderline."""
  x_range = (0, 0.35 * size) if side == "left" else (0.65 * size, size)
  while True:
    canvas = _Canvas(size, _background(rng))
    if canvas.try_place(rng, shape, rng.uniform(0.1, 0.16) * size, _colour(rng), x_range):
      return canvas.image


def _render_digit(rng, size: int, digit: np.ndarray) -> Image.Image:
  gray = Image.fromarray((digit * 255 // 16).astype(np.uint8), "L")
  gray = np.asarray(gray.resize((size, size), Image.Resampling.BILINEAR), np.float32) / 255
  foreground = ((255, 255, 255),) + tuple(COLOURS.values())
  rgb = gray[..., None] * np.asarray(foreground[rng.integers(len(foreground))], np.float32)
  return Image.fromarray(np.round(rgb).astype(np.uint8), "RGB")


def _sample(sample_id: str, question: str, answer: str, image: bool = True) -> dict:
  sample = {"id": sample_id}
  if image:
    sample["image"] = f"images/{sample_id}.png"
    question = "<image>\n" + question
  sample["conversations"] = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
  return sample


def _image_split(split: str, seed: int, count: int, size: int, digits: tuple,
                 image_dir: str) -> list:
  """Samples of one split, their PNGs written to `image_dir`; the tasks share it equally."""
  rng = np.random.default_rng([seed, _STREAMS[split]])
  tasks = _balanced(rng, TASKS, count)
  plan = {task: iter(_balanced(rng, options, tasks.count(task))) for task, options in (
      ("digits", range(10)), ("count", range(1, 6)), ("colour", tuple(COLOURS)),
      ("position", ("left", "right")))}
  images, labels = digits
  start, stop = (0, DIGITS_EVAL_START) if split == "train" else (DIGITS_EVAL_START, NUM_DIGITS)
  indices = np.arange(start, stop)
  pools = {d: collections.deque(rng.permutation(indices[labels[indices] == d])) for d in range(10)}
  samples = []
  for n, task in enumerate(tasks):
    answer = next(plan[task])
    question = _QUESTIONS[task][rng.integers(len(_QUESTIONS[task]))]
    sample_id = f"{split}-{task}-{n:05d}"
    if task == "digits":
      source = int(pools[answer][0])
      pools[answer].rotate(-1)  # reuse images only once the label's pool is used up
      sample_id += f"-src{source:04d}"
      image = _render_digit(rng, size, images[source])
    elif task == "count":
      image = _render_count(rng, size, answer)
    else:
      shape = SHAPES[rng.integers(3)]
      question = question.format(shape=shape)
      render = _render_colour if task == "colour" else _render_position
      image = render(rng, size, shape, answer)
    image.save(os.path.join(image_dir, sample_id + ".png"))
    samples.append(_sample(sample_id, question, str(answer)))
  return samples


def _first_sentence(name: str, function) -> str:
  """The docstring's opening sentence, or "" when it is a signature, fragment or too long."""
  doc = inspect.getdoc(function) or ""
  paragraphs = [" ".join(p.split()) for p in doc.split("\n\n")]
  paragraphs = [p for p in paragraphs if p and not p.startswith(name + "(")]
  if not paragraphs:
    return ""
  sentence = re.split(r"(?<=[.!?])\s", paragraphs[0])[0]
  if not sentence.endswith(".") or "->" in sentence or not 4 <= len(sentence.split()) <= 40:
    return ""
  return sentence


def _docstring_facts() -> list:
  """(qualified name, first sentence) of public stdlib functions, one per distinct sentence."""
  facts, seen = [], set()
  for module_name in _TEXT_MODULES:
    module = importlib.import_module(module_name)
    for name in sorted(dir(module)):
      function = getattr(module, name)
      if name.startswith("_") or not (inspect.isfunction(function) or inspect.isbuiltin(function)):
        continue
      sentence = _first_sentence(name, function)
      if sentence and sentence not in seen:  # aliases share a docstring: keep the first
        seen.add(sentence)
        facts.append((f"{module_name}.{name}", sentence))
  return facts


def _text_splits(seed: int, num_train: int, num_eval: int) -> tuple:
  """Train and eval text samples about different functions (and different answers)."""
  facts = _docstring_facts()
  if num_train + num_eval > len(facts):
    raise VisRegionError("num_text_train + num_text_eval",
                         f"expected at most {len(facts)} (the docstrings available), "
                         f"got {num_train + num_eval}")
  rng = np.random.default_rng([seed, _STREAMS["text"]])
  order = rng.permutation(len(facts))
  splits = {}
  questions = _QUESTIONS["text"]
  for split, chosen in (("eval", order[:num_eval]), ("train", order[num_eval:][:num_train])):
    splits[split] = [
        _sample(f"{split}-text-{n:05d}", questions[rng.integers(len(questions))].format(name=name),
                sentence, image=False)
        for n, (name, sentence) in enumerate(facts[i] for i in chosen)]
  return splits["train"], splits["eval"]


def _write_json(path: str, data) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(data, f, ensure_ascii=False, indent=1)
    f.write("\n")


def _result(root: str, manifest: dict) -> dict:
  files = {name: os.path.join(root, f"{name}.json")
           for name in ("train", "eval", "text_train", "text_eval", "manifest")}
  return {"root": root, "images": os.path.join(root, "images"), **files,
          "counts": manifest["counts"]}


def _read_manifest(root: str):
  """The manifest of a synthetic set at `root`, or None when there is none."""
  try:
    with open(os.path.join(root, "manifest.json"), encoding="utf-8") as f:
      manifest = json.load(f)
  except (OSError, ValueError):
    return None
  return manifest if isinstance(manifest, dict) and "format_version" in manifest else None


def _made_with(manifest, params: dict) -> bool:
  """Whether a set's manifest (None: no set) records exactly these parameters."""
  return bool(manifest) and {k: manifest.get(k) for k in params} == params


def _holds_older_set(root: str) -> bool:
  """Whether `root` holds a set to replace; raises when it holds other files."""
  if not (os.path.isdir(root) and os.listdir(root)):
    return False
  if _read_manifest(root) is None:
    raise VisRegionError(root, "expected an empty directory or a synthetic dataset "
                         "(it holds other files; refusing to overwrite them)")
  return True


def write_synthetic_dataset(root: str, *, seed: int = 0, num_train: int = 2000,
                            num_eval: int = 200, image_size: int = 64,
                            num_text_train: int = 200, num_text_eval: int = 100) -> dict:
  """Writes the dataset under `root` unless it is already there with these parameters.

  Everything is written into a temporary sibling directory that is renamed to
  `root` at the end, so an interrupted run never leaves a partial set behind a
  manifest. Returns the paths (`root`, `images`, `train`, `eval`, `text_train`,
  `text_eval`, `manifest`) and `counts` (samples per split and task).
  """
  for name, value, minimum in (("seed", seed, 0), ("num_train", num_train, 0),
                               ("num_eval", num_eval, 0),
                               ("image_size", image_size, MIN_IMAGE_SIZE),
                               ("num_text_train", num_text_train, 0),
                               ("num_text_eval", num_text_eval, 0)):
    _check_int(name, value, minimum)
  root = os.path.abspath(root)
  params = {"format_version": FORMAT_VERSION, "seed": seed, "image_size": image_size,
            "num_train": num_train, "num_eval": num_eval, "num_text_train": num_text_train,
            "num_text_eval": num_text_eval, "python": "%d.%d" % sys.version_info[:2]}
  existing = _read_manifest(root)
  if _made_with(existing, params):
    return _result(root, existing)

  digits = _load_digits()
  text_train, text_eval = _text_splits(seed, num_text_train, num_text_eval)
  os.makedirs(os.path.dirname(root), exist_ok=True)
  tmp = tempfile.mkdtemp(dir=os.path.dirname(root), prefix=f".{os.path.basename(root)}.tmp-")
  try:
    os.chmod(tmp, 0o755)  # mkdtemp's 0o700 would make the set private once renamed
    image_dir = os.path.join(tmp, "images")
    os.mkdir(image_dir)
    splits = {split: _image_split(split, seed, count, image_size, digits, image_dir)
              for split, count in (("train", num_train), ("eval", num_eval))}
    splits.update(text_train=text_train, text_eval=text_eval)
    for split, samples in splits.items():
      _write_json(os.path.join(tmp, f"{split}.json"), samples)
    counts = {split: dict(sorted(collections.Counter(sample_task(s) for s in samples).items()))
              for split, samples in splits.items()}
    manifest = {**params, "digits_split": {"train": [0, DIGITS_EVAL_START],
                                           "eval": [DIGITS_EVAL_START, NUM_DIGITS]},
                "counts": counts}
    _write_json(os.path.join(tmp, "manifest.json"), manifest)  # last: it marks the set complete
    install_directory(tmp, root, holds_older=_holds_older_set,
                      holds_same=lambda path: _made_with(_read_manifest(path), params))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return _result(root, manifest)


def chance_accuracy(samples: list) -> float:
  """Accuracy of always giving each task's most frequent answer: the bar to beat."""
  if not samples:
    return 0.0
  answers = collections.defaultdict(collections.Counter)
  for sample in samples:
    answers[sample_task(sample)][sample["conversations"][-1]["value"]] += 1
  return sum(max(c.values()) for c in answers.values()) / len(samples)
