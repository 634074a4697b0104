"""The demo's pretrained vision tower: saved as trained, cached, and actually informative."""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from visregion_jax.convert.vision import vision_tower_from_hf
from visregion_jax.data.image_processing import ImageProcessorConfig
from visregion_jax.demo import vision_pretrain
from visregion_jax.demo.synthetic import write_synthetic_dataset
from visregion_jax.errors import VisRegionError

# Compiling dominates these runs; they only need a tower that is not the initial one.
TINY = dict(hidden_size=32, num_layers=2, num_heads=2, steps=3, batch_size=16)
# The smallest run that reliably learns the side of a shape from 100 train images a task.
LEARN = dict(hidden_size=64, num_layers=3, num_heads=4, steps=400, batch_size=32,
             learning_rate=3e-3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return write_synthetic_dataset(str(tmp_path_factory.mktemp("vp") / "data"), num_train=400,
                                 num_eval=120, image_size=48, num_text_train=0, num_text_eval=0)


@pytest.fixture(scope="module")
def tiny(dataset, tmp_path_factory):
  """(tower directory, the tower as trained, train_vision_tower's report) of a TINY run."""
  trained = []
  train = vision_pretrain.train_vision_tower

  def recording_train(*args, **kwargs):
    trained.append(train(*args, **kwargs))
    return trained[-1]

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(vision_pretrain, "train_vision_tower", recording_train)
    out = vision_pretrain.pretrain_vision_tower(
        dataset, str(tmp_path_factory.mktemp("tiny") / "tower"), log=lambda _: None, **TINY)
  (tower, report), = trained
  return out, tower, report


def read_json(directory, name):
  return json.loads(pathlib.Path(directory, name).read_text(encoding="utf-8"))


def mtimes(directory):
  return {name: os.stat(os.path.join(directory, name)).st_mtime_ns
          for name in sorted(os.listdir(directory))}


def test_saved_tower_is_the_trained_one(tiny):
  out, trained, report = tiny
  assert os.listdir(os.path.dirname(out)) == ["tower"]  # no temporary directory left behind
  loaded = vision_tower_from_hf(out, dtype="float32")
  pixels = np.random.RandomState(0).randn(3, 48, 48, 3).astype(np.float32)
  for layer in (-2, -1):
    np.testing.assert_array_equal(np.asarray(loaded.features(pixels, (layer,), "default")),
                                  np.asarray(trained.features(pixels, (layer,), "default")))
  processor = ImageProcessorConfig.from_hf_dict(read_json(out, "preprocessor_config.json"),
                                                "preprocessor_config.json")
  assert processor == vision_pretrain.PretrainSettings(**TINY).processor()
  saved = read_json(out, vision_pretrain.REPORT)
  assert saved["params"]["steps"] == TINY["steps"]
  assert saved["accuracy"] == report["accuracy"]
  assert saved["classes"]["position"] == ["left", "right"]


def test_cache_returns_without_training(dataset, tiny):
  out = tiny[0]
  before = mtimes(out)
  logs = []
  assert vision_pretrain.pretrain_vision_tower(dataset, out, log=logs.append, **TINY) == out
  assert mtimes(out) == before
  assert logs == [f"vision pretrain: cached in {out}"]


def test_new_settings_retrain_deterministically(dataset, tiny, tmp_path):
  out = str(tmp_path / "tower")
  shutil.copytree(tiny[0], out)
  for seed in (1, 0):  # replaces the copy, then rebuilds the original from scratch
    vision_pretrain.pretrain_vision_tower(dataset, out, log=lambda _: None, **TINY, seed=seed)
    assert read_json(out, vision_pretrain.REPORT)["params"]["seed"] == seed
  weights = "model.safetensors"
  assert pathlib.Path(out, weights).read_bytes() == pathlib.Path(tiny[0], weights).read_bytes()
  assert os.listdir(tmp_path) == ["tower"]


def test_refuses_foreign_directory_before_training(dataset, tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  logs = []
  with pytest.raises(VisRegionError, match="refusing to overwrite"):
    vision_pretrain.pretrain_vision_tower(dataset, str(tmp_path), log=logs.append, **TINY)
  assert logs == []


@pytest.mark.parametrize("bad", [dict(steps=0), dict(image_size=50), dict(learning_rate=-1.0),
                                 dict(num_layers=1), dict(batch_size=True)])
def test_bad_settings(bad):
  with pytest.raises(VisRegionError):
    vision_pretrain.PretrainSettings(**bad)


def test_learns_colour_and_position(dataset, tmp_path):
  out = vision_pretrain.pretrain_vision_tower(dataset, str(tmp_path / "tower"),
                                              log=lambda _: None, **LEARN)
  held_out = read_json(out, vision_pretrain.REPORT)["accuracy"]["eval"]
  # 30 eval images a task; chance is 25% for colour, 50% for position.
  assert held_out["colour"] >= 0.7, held_out
  assert held_out["position"] >= 0.8, held_out
