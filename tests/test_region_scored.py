"""region.strategy="scored": a probe of the model on the training data picks the region.

The choice rule on given scores (the highest, as many from each half as `uniform`
takes, ties to the lower index, region.fraction's count); then, on the tiny LLaVA of
tests/train_fixtures.py with 8 decoder layers, the probe as training builds the model:
its scores are prune.layer_scores on image tokens of the documented calibration
batches, the same seed gives the same region from scratch, a saved probe is read back,
another seed probes another model, and a run trains exactly the probed layers.
"""

import json
import os

import pytest
import train_fixtures

from visregion_jax import prune, region
from visregion_jax.config.loading import load_config
from visregion_jax.convert import load_tokenizer
from visregion_jax.data.calibration import calibration_batches
from visregion_jax.data.from_config import data_config_for, open_source
from visregion_jax.prune.__main__ import main as prune_main
from visregion_jax.train import builder, region_probe
from visregion_jax.train import loop as train
from visregion_jax.train.__main__ import main as train_main

NUM_LAYERS = 8


@pytest.mark.parametrize("num_layers, fraction", [(8, 0.25), (8, 0.5), (5, 0.4), (30, 0.25), (3, 1.0), (2, 0.5)])
def test_scored_layers_take_the_highest_per_half(num_layers, fraction):
  scores = [((7 * i) % 11) / 11 for i in range(num_layers)]
  layers = region.scored_layers(scores, fraction)
  k = region.region_size(num_layers, fraction)
  uniform = region.select_layers(num_layers, fraction, "uniform")
  lower = num_layers // 2
  assert len(layers) == k == len(uniform) and list(layers) == sorted(set(layers))
  assert sum(i < lower for i in layers) == sum(i < lower for i in uniform)
  for half in (range(lower), range(lower, num_layers)):
    chosen = [i for i in layers if i in half]
    assert all(scores[i] >= scores[j] for i in chosen for j in half if j not in chosen)


def test_scored_layers_without_halves_and_ties():
  assert region.scored_layers([0.1, 0.2, 0.9, 0.8], 0.5, halves=False) == (2, 3)
  assert region.scored_layers([0.1, 0.2, 0.9, 0.8], 0.5) == (1, 2)
  assert region.scored_layers([0.5, 0.5, 0.5, 0.5], 0.5, halves=False) == (0, 1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  return train_fixtures.build_inputs(str(tmp_path_factory.mktemp("scored_inputs")), num_layers=NUM_LAYERS)


def scored_config(inputs, workdir, **extra):
  return load_config(train_fixtures.overrides(inputs, str(workdir), **{
      "region.strategy": "scored", "region.probe_samples": 8, "prune.batch_size": 4, **extra}), "test")


def probed(inputs, workdir, **extra) -> tuple:
  """(plan's region layers, the saved probe, the model) of a fresh build."""
  config = scored_config(inputs, workdir, **extra)
  model, plan = builder.build_model(config, str(workdir))
  with open(os.path.join(workdir, region_probe.PROBE_FILE), encoding="utf-8") as f:
    return plan.region_layers, json.load(f), model, config


def test_probe_is_image_token_block_influence_and_deterministic_given_the_seed(inputs, tmp_path, monkeypatch):
  layers, saved, model, config = probed(inputs, tmp_path / "a")
  assert layers == tuple(saved["region_layers"]) == region.scored_layers(saved["layer_scores"], 0.25)
  assert len(layers) == region.region_size(NUM_LAYERS, 0.25) == 2
  # The documented probe, rebuilt here: the first 8 usable training samples in the seed's order.
  tokenizer = load_tokenizer(model.config.source)
  data_config = data_config_for(config, model, tokenizer, config.model.vision_tower)
  batches = calibration_batches(open_source(config.data, "train"), tokenizer, data_config, 8, 4, config.seed)
  assert saved["layer_scores"] == [float(s) for s in prune.layer_scores(model, batches, tokens="image")]
  # Same seed, from scratch: the same scores and region; half the layers: the same scores.
  again, saved_again, _, _ = probed(inputs, tmp_path / "b")
  assert again == layers and saved_again["layer_scores"] == saved["layer_scores"]
  half, saved_half, _, _ = probed(inputs, tmp_path / "c", **{"region.fraction": 0.5})
  assert len(half) == 4 and saved_half["layer_scores"] == saved["layer_scores"] and set(layers) <= set(half)
  # Another seed: another projector, other scores.
  _, other, _, _ = probed(inputs, tmp_path / "d", seed=1)
  assert other["layer_scores"] != saved["layer_scores"]
  # A rebuild with the same settings (a resume, an export) reads the probe back.
  monkeypatch.setattr(region_probe, "probe_scores", lambda *a: pytest.fail("probed again"))
  assert builder.build_model(config, str(tmp_path / "a"))[1].region_layers == layers


def test_a_scored_run_trains_the_probed_layers(inputs, tmp_path):
  workdir = tmp_path / "run"
  results = train.run(scored_config(inputs, workdir, **{"train.steps": 2}))
  with open(workdir / "region.json", encoding="utf-8") as f:
    trained = json.load(f)["region_layers"]
  with open(workdir / region_probe.PROBE_FILE, encoding="utf-8") as f:
    assert trained == json.load(f)["region_layers"]
  assert results["trainable_params"] > 0 and len(trained) == 2


@pytest.mark.parametrize("extra, expected", [
    ({"model.vision_tower": ""}, "region.strategy: expected a vision-language model for scored"),
    ({"region.probe_samples": 0}, "region.probe_samples: expected an integer >= 1"),
])
def test_bad_scored_config_is_one_error_line(inputs, tmp_path, capsys, extra, expected):
  argv = train_fixtures.overrides(inputs, str(tmp_path / "w"), **{"region.strategy": "scored", **extra})
  assert train_main(argv) == 2
  lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


def test_pruning_a_scored_model_without_its_region_json_says_so(inputs, tmp_path, capsys):
  """A scored run's region is only known from the run (WORKDIR/region.json)."""
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "llava",
                                                           "text_config": {"num_hidden_layers": NUM_LAYERS}}))
  assert prune_main(train_fixtures.overrides(inputs, str(tmp_path), **{"region.strategy": "scored"})) == 2
  assert "region.strategy: expected the probe's layer scores" in capsys.readouterr().err
