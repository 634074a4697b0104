"""`python -m visregion_jax.prune` end to end on a tiny trained LLaVA (4 layers, region [1]).

References independent of the command: the calibration batches are rebuilt here from
the documented order (numpy default_rng(seed) permutation, first N usable samples,
SampleLoader + collate) and scored with prune.layer_scores; the removed layers are
the k lowest scores outside the region by a plain argsort; the export is read back
with transformers, each kept layer compared with the original layer it came from;
the parameter counts are transformers' counts of the two checkpoints.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import train_fixtures
import transformers
from consumer_check import check_transformers_path
from PIL import Image

from visregion_jax import convert, plots, prune
from visregion_jax.config.loading import load_config
from visregion_jax.data import pipeline, sources
from visregion_jax.data.from_config import data_config_for
from visregion_jax.errors import VisRegionError
from visregion_jax.prune import selection
from visregion_jax.prune.__main__ import main as prune_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_LAYERS, REGION = 4, [1]  # uniform, fraction 0.25 of 4 layers (see test_train.py)
SMALL = {"eval.num_samples": 4, "eval.max_new_tokens": 2, "prune.calibration_samples": 8, "prune.latency_runs": 3,
         "prune.batch_size": 4}
@pytest.fixture(scope="module")
def inputs(tiny_inputs):
  return tiny_inputs


@pytest.fixture(scope="module")
def config_file():
  return os.path.join(train_fixtures.CONFIGS, "tiny_test.py")


def argv(inputs, config_file, workdir, **extra) -> list:
  values = train_fixtures.overrides(inputs, workdir, **SMALL, **extra)[2:]
  return ["--config", config_file] + values


@pytest.fixture(scope="module")
def trained(tiny_trained, tmp_path_factory):
  """A copy of the shared trained workdir: the k=1 run prunes in it."""
  return train_fixtures.copy_tree(tiny_trained, str(tmp_path_factory.mktemp("trained") / "w"))


@pytest.fixture(scope="module")
def runs(inputs, config_file, trained, tmp_path_factory):
  """{k: (workdir, argv)}: k=1 scores afresh in the training workdir; k=2 runs on a copy
  whose config asks for another region (region.json must win), reuses k=1's scores and
  has no held-out sets (those metrics become null; compiling them twice more is slow)."""
  copy = train_fixtures.copy_tree(trained, str(tmp_path_factory.mktemp("copy") / "w"))
  out = {1: (trained, argv(inputs, config_file, trained, **{"prune.k": 1})),
         2: (copy, argv(inputs, config_file, copy, **{
             "prune.k": 2, "region.strategy": "last", "data.eval_json": "", "data.text_eval_json": "",
             "prune.scores_json": os.path.join(trained, "prune", "scores.json")}))}
  for _, args in out.values():
    assert prune_main(args) == 0
  return out


def read(workdir, name):
  with open(os.path.join(workdir, "prune", name), encoding="utf-8") as f:
    return json.load(f)


def lowest_outside(scores, region, k):
  order = [i for i in np.argsort(scores, kind="stable") if i not in region]
  return sorted(int(i) for i in order[:k])


@pytest.mark.parametrize("k", [1, 2])
def test_scores_json(runs, k):
  saved = read(runs[k][0], "scores.json")
  assert set(saved) == {"layer_scores", "region", "removed", "metric"}
  assert len(saved["layer_scores"]) == NUM_LAYERS and saved["metric"] == "block_influence"
  assert saved["region"] == REGION
  assert saved["removed"] == lowest_outside(saved["layer_scores"], REGION, k)
  assert not set(saved["removed"]) & set(REGION)


def test_reused_scores_are_the_given_file(runs):
  assert read(runs[2][0], "scores.json")["layer_scores"] == read(runs[1][0], "scores.json")["layer_scores"]


def test_scores_equal_layer_scores_on_the_same_calibration_batches(runs):
  workdir, args = runs[1]
  config = load_config(args, "test")
  hf_dir = os.path.join(workdir, "hf")
  model = convert.from_hf(hf_dir)
  tokenizer = convert.load_tokenizer(hf_dir)
  data_config = data_config_for(config, model, tokenizer, hf_dir)
  source = sources.JsonSource(config.data.train_json, config.data.image_root)
  loader = pipeline.SampleLoader(source, tokenizer, data_config)
  records = [r for r in (loader(i) for i in np.random.default_rng(config.seed).permutation(len(source)))
             if "skip" not in r][:config.prune.calibration_samples]
  size = config.prune.batch_size
  batches = [pipeline.collate(records[i:i + size], data_config) for i in range(0, len(records), size)]
  want = prune.layer_scores(model, batches)
  np.testing.assert_allclose(read(workdir, "scores.json")["layer_scores"], want, rtol=1e-6, atol=0)
  assert len(records) == 8 and len(source) > 8  # a subset, so the order matters


def colors_in(path) -> set:
  with Image.open(path) as image:
    assert image.format == "PNG"
    width, height = image.size
    assert 300 <= width <= 4000 and 200 <= height <= 2000
    return {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 20)}


@pytest.mark.parametrize("k", [1, 2])
def test_chart_marks_region_and_removed_layers(runs, k):
  colors = colors_in(os.path.join(runs[k][0], "prune", "scores.png"))
  assert {plots.REGION, plots.REMOVED, plots.PLAIN} <= colors


def test_chart_colours_only_what_is_there(tmp_path):
  plain = colors_in(plots.layer_scores_chart(str(tmp_path / "a.png"), [0.3, 0.1, None, -0.2]))
  assert plots.PLAIN in plain and not {plots.REGION, plots.REMOVED, plots.REGION_REMOVED} & plain
  both = colors_in(plots.layer_scores_chart(str(tmp_path / "b.png"), [0.3, 0.1, 0.2], region=(0, 1),
                                            removed=(1,)))
  assert {plots.REGION, plots.REGION_REMOVED} <= both and plots.REMOVED not in both


def layer_tensors(state: dict, index: int) -> dict:
  prefix = f"model.language_model.layers.{index}."
  return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def outside_layers(state: dict) -> set:
  return {k for k in state if not k.startswith("model.language_model.layers.")}


@pytest.mark.parametrize("k", [1, 2])
def test_export_is_the_original_without_the_removed_layers(runs, k):
  workdir = runs[k][0]
  removed = read(workdir, "scores.json")["removed"]
  before = transformers.LlavaForConditionalGeneration.from_pretrained(os.path.join(workdir, "hf"))
  after = transformers.LlavaForConditionalGeneration.from_pretrained(os.path.join(workdir, "prune", "hf"))
  assert after.config.text_config.num_hidden_layers == NUM_LAYERS - k
  old, new = before.state_dict(), after.state_dict()
  kept = [i for i in range(NUM_LAYERS) if i not in removed]
  for j, i in enumerate(kept):
    want, got = layer_tensors(old, i), layer_tensors(new, j)
    assert want.keys() == got.keys() and want
    for name in want:
      torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
  assert outside_layers(old) == outside_layers(new)
  for name in outside_layers(old):
    torch.testing.assert_close(new[name], old[name], rtol=0, atol=0)
  report = read(workdir, "report.json")
  assert report["before"]["num_params"] == sum(p.numel() for p in before.parameters())
  assert report["pruned"]["num_params"] == sum(p.numel() for p in after.parameters())


def test_pruned_export_answers_through_transformers_processor(runs):
  check_transformers_path(os.path.join(runs[2][0], "prune", "hf"))


def report_table(workdir) -> list:
  with open(os.path.join(workdir, "prune", "report.md"), encoding="utf-8") as f:
    return [line.strip() for line in f if line.startswith("|")]


@pytest.mark.parametrize("k", [1, 2])
def test_report_has_every_metric_before_and_after(runs, k):
  report = read(runs[k][0], "report.json")
  for side in ("before", "pruned"):
    m = report[side]
    assert 0.0 < m["forward_latency_s"] < 60.0
    assert m["forward_latency"]["min_s"] <= m["forward_latency_s"] <= m["forward_latency"]["max_s"]
    assert m["num_params"] > 0
    if k == 1:
      assert 0.0 <= m["eval_accuracy"] <= 1.0
      assert np.isfinite(m["text_perplexity"]) and m["text_perplexity"] > 1.0
    else:
      assert m["eval_accuracy"] is None and m["text_perplexity"] is None
  assert report["num_layers"] == {"before": NUM_LAYERS, "after": NUM_LAYERS - k}
  shifted = [i - sum(r < i for r in report["removed"]) for i in REGION]  # layers below were dropped
  assert report["region"] == {"before": REGION, "after": shifted}
  assert report["selection"]["mode"] == "one-shot" and report["heal"] is None and report["healed"] is None
  table = report_table(runs[k][0])
  assert len(table) == 2 + 6  # header, rule, accuracy, perplexity, three latency rows, parameters
  assert sum("| n/a | n/a |" in line for line in table) == (0 if k == 1 else 2)


def test_block_scores_select_only_layers_where_a_full_block_starts():
  # Blocks of 2 in a 4-layer model: entries 0..2 score blocks [i, i+1], layer 3 has none.
  scores = [0.1, 0.5, 0.05, None]
  assert selection.choose_layers(scores, 1, (1,)) == (2,)
  assert selection.choose_layers(scores, 2, ()) == (0, 2)
  # Contiguous: the block of k=2 with the lowest score that avoids the region.
  assert selection.choose_layers([0.3, 0.2, 0.1, None], 2, (3,), contiguous=True) == (1, 2)
  assert selection.choose_layers([0.3, 0.2, 0.1, None], 2, (), contiguous=True) == (2, 3)


@pytest.mark.parametrize("saved, block, expected", [
    ({"layer_scores": [0.1, 0.2, 0.3, 0.4], "metric": "angular"}, 1, "expected prune.metric"),
    ({"layer_scores": [0.1, 0.2, 0.3, 0.4], "metric": "block_influence"}, 2, "blocks of 2 layers"),
    ({"layer_scores": [0.1, None, 0.3, None], "metric": "block_influence"}, 2, "blocks of 2 layers"),
    ({"layer_scores": "0.1", "metric": "block_influence"}, 1, "expected a list"),
])
def test_reused_scores_must_fit_the_configuration(tmp_path, saved, block, expected):
  path = tmp_path / "scores.json"
  path.write_text(json.dumps(saved))
  with pytest.raises(VisRegionError, match=expected):
    selection.read_scores(str(path), NUM_LAYERS, block, "block_influence")
  saved.update(layer_scores=[0.1, 0.2, 0.3, 0.4][:NUM_LAYERS - block + 1] + [None] * (block - 1),
               metric="block_influence")
  path.write_text(json.dumps(saved))
  assert selection.read_scores(str(path), NUM_LAYERS, block, "block_influence") == saved["layer_scores"]


def error_lines(capsys) -> list:
  return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def empty_json(tmp_path):
  path = tmp_path / "empty.json"
  path.write_text("[]")
  return str(path)


def short_scores(tmp_path):
  path = tmp_path / "scores.json"
  path.write_text(json.dumps({"layer_scores": [0.1, 0.2, 0.3], "region": [1], "removed": [0],
                              "metric": "block_influence"}))
  return str(path)


@pytest.mark.parametrize("extra, expected", [
    (lambda tmp: {"prune.k": 3}, "prune.k: expected 0 < k < 3"),
    (lambda tmp: {"prune.calibration_json": empty_json(tmp)}, "expected at least one calibration sample"),
    (lambda tmp: {"prune.model": str(tmp / "missing")}, "no such file or directory"),
    (lambda tmp: {"prune.scores_json": short_scores(tmp)}, "expected 4 layer scores for this model, got 3"),
])
def test_bad_input_is_one_error_line(inputs, config_file, trained, tmp_path, capsys, extra, expected):
  assert prune_main(argv(inputs, config_file, trained, **extra(tmp_path))) == 2
  lines = error_lines(capsys)
  assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


def test_missing_export_from_the_command_line(inputs, tmp_path):
  """Through `python -m`: a workdir without WORKDIR/hf (train.export_hf off)."""
  done = subprocess.run([sys.executable, "-m", "visregion_jax.prune"]
                        + train_fixtures.overrides(inputs, str(tmp_path)),
                        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  lines = [line for line in done.stderr.splitlines() if line.strip()]
  assert done.returncode == 2 and len(lines) == 1, done.stderr
  assert lines[0] == (f"error: {tmp_path}/hf: expected the training run's HF export (train.export_hf), "
                      "or set prune.model")
