"""The synthetic LLaVA-format set: files, splits, determinism, caching and rendering."""

import collections
import importlib.util
import json
import os
import re

import numpy as np
import pytest
from PIL import Image
from skimage import measure

from visregion_jax import evaluation
from visregion_jax.demo import synthetic
from visregion_jax.errors import VisRegionError

SIZE = 48
PARAMS = dict(seed=3, num_train=200, num_eval=40, image_size=SIZE, num_text_train=60,
              num_text_eval=30)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return synthetic.write_synthetic_dataset(str(tmp_path_factory.mktemp("syn") / "data"), **PARAMS)


def load(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def answer(sample):
  return sample["conversations"][-1]["value"]


def pixels(dataset, sample):
  return np.asarray(Image.open(os.path.join(dataset["root"], sample["image"])))


def of_task(dataset, task, split="train"):
  return [s for s in load(dataset[split]) if evaluation.sample_task(s) == task]


def tree(root):
  files = {}
  for directory, _, names in os.walk(root):
    for name in names:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, root)] = f.read()
  return files


def test_counts_and_splits(dataset):
  expected = {"train": 200, "eval": 40, "text_train": 60, "text_eval": 30}
  for split, count in expected.items():
    assert len(load(dataset[split])) == count
    assert sum(dataset["counts"][split].values()) == count
  assert dataset["counts"]["train"] == {task: 50 for task in sorted(synthetic.TASKS)}
  assert dataset["counts"]["eval"] == {task: 10 for task in sorted(synthetic.TASKS)}
  manifest = load(dataset["manifest"])
  assert manifest["counts"] == dataset["counts"]
  assert (manifest["seed"], manifest["image_size"]) == (3, SIZE)
  assert manifest["format_version"] == synthetic.FORMAT_VERSION


def test_eval_digits_are_never_seen_in_train(dataset):
  sources = {}
  for split in ("train", "eval"):
    ids = [s["id"] for s in of_task(dataset, "digits", split)]
    sources[split] = [int(re.fullmatch(r".*-src(\d+)", i).group(1)) for i in ids]
  assert max(sources["train"]) < synthetic.DIGITS_EVAL_START <= min(sources["eval"])
  assert not set(sources["train"]) & set(sources["eval"])
  assert len(set(sources["train"])) == len(sources["train"])  # pool not used up: no repeats


def test_samples_follow_the_llava_format_and_images_exist(dataset):
  samples = load(dataset["train"]) + load(dataset["eval"])
  assert len({s["id"] for s in samples}) == len(samples)
  for s in samples:
    assert set(s) == {"id", "image", "conversations"}
    assert s["image"] == f"images/{s['id']}.png"
    human, gpt = s["conversations"]
    assert (human["from"], gpt["from"]) == ("human", "gpt")
    assert human["value"].startswith("<image>\n") and human["value"].count("<image>") == 1
    with Image.open(os.path.join(dataset["root"], s["image"])) as image:
      assert (image.format, image.mode, image.size) == ("PNG", "RGB", (SIZE, SIZE))
  assert len(os.listdir(dataset["images"])) == len(samples)


def test_text_splits_are_text_only_and_disjoint(dataset):
  names = {}
  for split in ("text_train", "text_eval"):
    samples = load(dataset[split])
    for s in samples:
      assert set(s) == {"id", "conversations"}
      assert "<image>" not in s["conversations"][0]["value"]
      assert answer(s).endswith(".")
    names[split] = {re.search(r"`([\w.]+)`", s["conversations"][0]["value"]).group(1)
                    for s in samples}
    assert len(names[split]) == len(samples)
  assert not names["text_train"] & names["text_eval"]
  answers = [answer(s) for split in ("text_train", "text_eval") for s in load(dataset[split])]
  assert len(set(answers)) == len(answers)


def test_answers_are_balanced_per_task(dataset):
  options = {"digits": 10, "count": 5, "colour": 4, "position": 2}
  for task, n in options.items():
    counts = collections.Counter(answer(s) for s in of_task(dataset, task))
    assert len(counts) == n and max(counts.values()) - min(counts.values()) <= 1, (task, counts)


def test_count_images_hold_that_many_separate_shapes(dataset):
  for s in of_task(dataset, "count"):
    image = pixels(dataset, s)
    shapes = np.any(image != image[0, 0], axis=-1)
    assert measure.label(shapes, connectivity=2).max() == int(answer(s)), s["id"]


def test_colour_images_are_dominated_by_the_stated_colour(dataset):
  for s in of_task(dataset, "colour"):
    image = pixels(dataset, s)
    area = {name: np.all(image == rgb, axis=-1).sum() for name, rgb in synthetic.COLOURS.items()}
    assert max(area, key=area.get) == answer(s), (s["id"], area)
    shape = re.search(r"the (\w+)", s["conversations"][0]["value"]).group(1)
    assert shape in synthetic.SHAPES


def test_position_images_put_the_shape_on_the_stated_side(dataset):
  for s in of_task(dataset, "position"):
    image = pixels(dataset, s)
    _, xs = np.nonzero(np.any(image != image[0, 0], axis=-1))
    assert ("left" if xs.mean() < SIZE / 2 else "right") == answer(s), s["id"]
    assert abs(xs.mean() - SIZE / 2) > 0.1 * SIZE


def test_same_seed_is_byte_identical_and_another_seed_differs(dataset, tmp_path):
  again = synthetic.write_synthetic_dataset(str(tmp_path / "again"), **PARAMS)
  assert tree(again["root"]) == tree(dataset["root"])
  other = synthetic.write_synthetic_dataset(str(tmp_path / "other"), **{**PARAMS, "seed": 4})
  original, changed = tree(dataset["root"]), tree(other["root"])
  for name in ("train.json", "eval.json", "text_train.json", "text_eval.json"):
    assert original[name] != changed[name]
  same_name = [n for n in original if n.startswith("images/") and n in changed]
  assert sum(original[n] == changed[n] for n in same_name) < len(same_name) / 2


def test_rerun_with_same_parameters_rewrites_nothing(dataset):
  before = {name: os.stat(os.path.join(dataset["root"], name)).st_mtime_ns
            for name in tree(dataset["root"])}
  assert synthetic.write_synthetic_dataset(dataset["root"], **PARAMS) == dataset
  after = {name: os.stat(os.path.join(dataset["root"], name)).st_mtime_ns for name in before}
  assert after == before


def test_other_parameters_replace_an_old_set(tmp_path):
  root = str(tmp_path / "data")
  synthetic.write_synthetic_dataset(root, num_train=8, num_eval=4, image_size=SIZE,
                                    num_text_train=2, num_text_eval=2)
  result = synthetic.write_synthetic_dataset(root, num_train=4, num_eval=4, image_size=SIZE,
                                             num_text_train=2, num_text_eval=2)
  assert len(load(result["train"])) == 4 and len(os.listdir(result["images"])) == 8
  assert os.listdir(tmp_path) == ["data"]  # no temporary or old directories left


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(VisRegionError, match="refusing to overwrite"):
    synthetic.write_synthetic_dataset(str(tmp_path), num_train=4, num_eval=4)
  assert os.listdir(tmp_path) == ["notes.txt"]


def test_failed_run_leaves_no_dataset(tmp_path, monkeypatch):
  def crash(*args):
    raise RuntimeError("killed")

  monkeypatch.setattr(synthetic, "_render_position", crash)
  with pytest.raises(RuntimeError):
    synthetic.write_synthetic_dataset(str(tmp_path / "data"), num_train=8, num_eval=4)
  assert os.listdir(tmp_path) == []


def test_missing_scikit_learn_is_a_clear_error(tmp_path, monkeypatch):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "sklearn" else find_spec(name, *a))
  with pytest.raises(VisRegionError, match="^scikit-learn: .*pip install scikit-learn"):
    synthetic.write_synthetic_dataset(str(tmp_path / "data"), num_train=4, num_eval=4)
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kwargs, where", [
    (dict(image_size=16), "image_size"), (dict(num_train=-1), "num_train"),
    (dict(seed=1.5), "seed"), (dict(num_text_train=100_000), "num_text_train + num_text_eval")])
def test_bad_parameters(tmp_path, kwargs, where):
  with pytest.raises(VisRegionError, match=f"^{re.escape(where)}: "):
    synthetic.write_synthetic_dataset(str(tmp_path / "data"), **kwargs)


@pytest.mark.parametrize("prediction, reference, expected", [
    ("red", "red", True), ("Red.", "red", True), ("  RED \n", "red", True),
    ("The answer is red", "red", True), ("It's red.", "red", True),
    ("The circle is red.", "red", True), ("It is on the left side.", "left", True),
    ("left\nWhat colour is the square?", "left", True), ("Three.", "3", True),
    ("There are 3 shapes.", "3", True), ("7", "7", True),
    ("red or blue", "red", False), ("red, blue", "red", False), ("not red", "red", False),
    ("It is not red.", "red", False), ("reddish", "red", False), ("", "red", False),
    ("The circle is blue but the square is red.", "red", False), ("17", "7", False),
    ("3 or 4 shapes", "3", False), ("blue", "red", False),
    ("Blue. The circle is red.", "red", False), ("Red. It is red.", "red", True),
    ("Return the metadata change time, reported by os.stat().",
     "Return the metadata change time, reported by os.stat().", True),
    ("Return the square root of x.", "Return the square root of x", True),
])
def test_answer_matches(prediction, reference, expected):
  assert evaluation.answer_matches(prediction, reference) is expected


def test_chance_accuracy(dataset):
  toy = [{"id": f"train-{task}-{n}", "conversations": [{"from": "gpt", "value": a}]}
         for n, (task, a) in enumerate([("count", "1"), ("count", "1"), ("count", "2"),
                                        ("colour", "red")])]
  assert synthetic.chance_accuracy(toy) == 0.75
  assert synthetic.chance_accuracy([]) == 0.0
  # Balanced answers: 1/10, 1/5, 1/4 and 1/2 of 50 samples each.
  assert synthetic.chance_accuracy(load(dataset["train"])) == pytest.approx((5 + 10 + 13 + 25) / 200)
