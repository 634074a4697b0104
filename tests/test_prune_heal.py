"""`python -m visregion_jax.prune` with healing, given layers, iterative selection and
latency warnings, on the tiny trained LLaVA of tests/train_fixtures.py (4 layers,
region [1]).

Healing is checked on the exported tensors: the healed export against the pruned one
(only the heal layers may differ, every other tensor bit-identical), the pruned one
against the training run's export (the kept layers bit-identical), and transformers
loading the healed export. The kill test runs the command in subprocesses
(tests/run_tiny_training.py --prune) sharing a compilation cache: a healing killed with
SIGKILL after its checkpoint 2 and rerun must end bit-equal to an uninterrupted one.
Bad input goes through `main` with the model loader replaced by one that fails the test.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
import train_fixtures
import transformers
from safetensors.numpy import load_file
from test_train_distributed import subprocess_env

from visregion_jax import prune
from visregion_jax.config.loading import load_config
from visregion_jax.convert import load_tokenizer
from visregion_jax.data.calibration import calibration_batches
from visregion_jax.data.from_config import data_config_for
from visregion_jax.loading import load_model
from visregion_jax.prune import heal, job, latency, selection
from visregion_jax.prune.__main__ import main as prune_main

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
SCRIPT = os.path.join(TESTS, "run_tiny_training.py")
NUM_LAYERS, REGION = 4, [1]
SMALL = {"prune.calibration_samples": 8, "prune.batch_size": 4, "prune.latency_runs": 2,
         "eval.num_samples": 4, "eval.max_new_tokens": 2}
NO_EVAL = {"data.eval_json": "", "data.text_eval_json": ""}  # the kill test compares tensors, not metrics
HEAL_STEPS = 4  # tiny_test.py checkpoints every 2 steps
RUN_TIMEOUT = 420
LAYER = re.compile(r"language_model\.(?:model\.)?layers\.(\d+)\.")


@pytest.fixture(scope="module")
def inputs(tiny_inputs):
  return tiny_inputs


@pytest.fixture(scope="module")
def trained(tiny_trained):
  return tiny_trained  # each test that prunes copies it


def argv(inputs, workdir, **extra) -> list:
  return train_fixtures.overrides(inputs, workdir, **{**SMALL, **extra})


def tensors(workdir, *parts) -> dict:
  return load_file(os.path.join(workdir, *parts, "model.safetensors"))


def layer_of(name: str):
  match = LAYER.search(name)
  return int(match.group(1)) if match else None


def changed(before: dict, after: dict) -> set:
  assert before.keys() == after.keys()
  return {k for k in before if not np.array_equal(before[k], after[k])}


def read(workdir, name):
  with open(os.path.join(workdir, "prune", name), encoding="utf-8") as f:
    return json.load(f)


# --- bad input: one error line, before the model loads -----------------------------------

class Loaded(Exception):
  pass


@pytest.fixture
def no_loading(monkeypatch):
  def refuse(*args, **kwargs):
    raise Loaded("the model was loaded")
  monkeypatch.setattr(job, "load_model", refuse)


@pytest.fixture(scope="module")
def config_only(tmp_path_factory):
  """A model directory with nothing but the config.json a 4-layer llava-hf has: the
  checks must need no more."""
  directory = tmp_path_factory.mktemp("config_only")
  (directory / "config.json").write_text(json.dumps({"model_type": "llava",
                                                     "text_config": {"num_hidden_layers": NUM_LAYERS}}))
  return str(directory)


@pytest.mark.parametrize("extra, expected", [
    ({"prune.layers": "(4,)"}, "prune.layers: expected distinct layer indices in [0, 4)"),
    ({"prune.layers": "(0,0)"}, "prune.layers: expected distinct layer indices"),
    ({"prune.layers": "(1,3)"}, "prune.layers: expected layers outside the visual region [1]"),
    ({"prune.layers": "(2,)", "prune.iterative": "true"}, "prune.iterative: expected False with prune.layers"),
    ({"prune.iterative": "true", "prune.block_size": "2"}, "prune.iterative: expected prune.contiguous=False"),
    ({"prune.heal_steps": "-1"}, "prune.heal_steps: expected an integer >= 0, got -1"),
    ({"prune.heal_steps": "2", "prune.heal_layers": "sideways"},
     "prune.heal_layers: expected one of ['region', 'neighbours'] or a tuple"),
    ({"prune.heal_layers": "(0,x)"}, "prune.heal_layers: expected one of"),
    ({"prune.heal_steps": "2", "prune.k": "2", "prune.heal_layers": "(1,2)"},
     "prune.heal_layers: expected layer indices of the pruned model, in [0, 2)"),
    ({"prune.heal_steps": "2", "prune.heal_lora_rank": "-2"}, "prune.heal_lora_rank: expected an integer >= 0"),
    ({"prune.heal_steps": "2", "train.batch_size": "0"}, "train.batch_size: expected an integer >= 1"),
    ({"prune.latency_runs": "1"}, "prune.latency_runs: expected an integer >= 2"),
])
def test_bad_input_is_one_error_line_before_the_model_loads(inputs, config_only, tmp_path, capsys, no_loading,
                                                            extra, expected):
  start = time.perf_counter()
  status = prune_main(argv(inputs, str(tmp_path), **{"prune.model": config_only, **extra}))
  seconds = time.perf_counter() - start
  lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert status == 2 and len(lines) == 1, lines
  assert lines[0].startswith("error: ") and expected in lines[0], lines
  assert seconds < 5
  assert not os.path.exists(tmp_path / "prune")


def test_valid_choices_pass_the_checks(inputs, config_only, tmp_path, no_loading):
  """The positive control: a region layer with allow_region, healing its neighbours."""
  with pytest.raises(Loaded):
    prune_main(argv(inputs, str(tmp_path), **{
        "prune.model": config_only, "prune.layers": "(1,)", "prune.allow_region": "true",
        "prune.heal_steps": "2", "prune.heal_layers": "neighbours"}))


# --- choices -------------------------------------------------------------------------------

def test_heal_layer_specs():
  assert heal.heal_spec("region") == "region" and heal.heal_spec("neighbours") == "neighbours"
  assert heal.heal_spec("(2,0)") == (0, 2) and heal.heal_spec("1") == (1,) and heal.heal_spec((3, 1)) == (1, 3)
  # 8 layers, 2 and 3 removed: kept 1 (-> 1) below, 4 (-> 2) above; 6 removed: 5 (-> 3), 7 (-> 4).
  assert heal.neighbours([2, 3, 6], 8) == (1, 2, 3, 4)
  assert heal.neighbours([0], 4) == (0,)  # layer 1, now the first
  assert heal.heal_layers("region", (1, 5), (2, 3, 6), 8) == (1, 3)


@pytest.fixture(scope="module")
def scoring(inputs, trained):
  """The trained model and a calibration-batch maker, as the command builds them."""
  config = load_config(argv(inputs, trained), "test")
  hf_dir = os.path.join(trained, "hf")
  model = load_model(hf_dir)
  tokenizer = load_tokenizer(hf_dir)
  data_config = data_config_for(config, model, tokenizer, hf_dir)
  source = job.calibration_source(config)
  return model, lambda: calibration_batches(source, tokenizer, data_config, 8, 4, config.seed)


def settings(**changes):
  return ml_collections.ConfigDict({"k": 1, "layers": (), "iterative": False, "contiguous": False,
                                    "allow_region": False, "metric": "block_influence", "tokens": "all", **changes})


def test_iterative_agrees_with_one_shot_for_one_layer_and_rescores_after(scoring):
  model, batches = scoring
  scores, one_shot, rounds = selection.select(model, batches, settings(), REGION, 1)
  assert rounds == [] and len(one_shot) == 1 and one_shot[0] not in REGION
  same_scores, iterative, (first,) = selection.select(model, batches, settings(iterative=True), REGION, 1)
  assert iterative == one_shot and same_scores == scores and first["layer_scores"] == scores
  # k = 2: round two scores the model without round one's layer, in its own indices.
  _, removed, rounds = selection.select(model, batches, settings(iterative=True, k=2), REGION, 1)
  assert rounds[0]["removed_original"] == one_shot[0]
  shallower = prune.drop_layers(model, one_shot)
  np.testing.assert_allclose(rounds[1]["layer_scores"], prune.layer_scores(shallower, batches()), rtol=1e-6)
  kept = [i for i in range(NUM_LAYERS) if i not in one_shot]
  assert rounds[1]["removed_original"] == kept[rounds[1]["removed"]]
  assert removed == tuple(sorted(r["removed_original"] for r in rounds)) and not set(removed) & set(REGION)


def test_latency_warnings():
  def timed(times):
    return latency.summary(times)
  quiet = {"runs": 3, "other_load_cores": 0.01, "cpu_count": 8,
           "models": {"before": timed([1.00, 1.01, 1.02]), "pruned": timed([0.80, 0.81, 0.82])}}
  assert latency.warnings(quiet) == []
  busy = {**quiet, "other_load_cores": 1.5}
  assert [w for w in latency.warnings(busy) if "1.50 of 8 cores" in w]
  noisy = {**quiet, "models": {"before": timed([1.0, 1.3, 1.0]), "pruned": timed([0.8, 1.1, 0.9])}}
  lines = latency.warnings(noisy)
  assert any(w.startswith("before: the 3 timings spread by 30%") for w in lines)
  assert any(w.startswith("pruned vs before: their latency ranges") for w in lines)
  assert [w for w in latency.warnings({**quiet, "other_load_cores": None}) if "unknown" in w]


# --- given layers, healing the neighbours with LoRA, the report ----------------------------

@pytest.fixture(scope="module")
def given(inputs, trained, tmp_path_factory):
  workdir = train_fixtures.copy_tree(trained, str(tmp_path_factory.mktemp("given") / "w"))
  assert prune_main(argv(inputs, workdir, **{
      "prune.layers": "(2,)", "prune.heal_steps": 2, "prune.heal_layers": "neighbours",
      "prune.heal_lora_rank": 2, "prune.heal_lr": 1e-2})) == 0
  return workdir


def test_given_layers_are_removed_exactly(given):
  assert read(given, "scores.json")["removed"] == [2]
  original, pruned = tensors(given, "hf"), tensors(given, "prune", "pruned")
  new_index = {0: 0, 1: 1, 3: 2}
  want = {LAYER.sub(lambda m: m.group(0).replace(m.group(1), str(new_index[int(m.group(1))])), k): v
          for k, v in original.items() if layer_of(k) != 2}
  assert want.keys() == pruned.keys()
  assert all(np.array_equal(want[k], pruned[k]) for k in want)


def test_lora_healing_changes_only_the_neighbours_linears(given):
  moved = changed(tensors(given, "prune", "pruned"), tensors(given, "prune", "hf"))
  assert {layer_of(k) for k in moved} == {1, 2}  # the kept layers next to the removed layer 2
  assert all(k.endswith("_proj.weight") for k in moved), moved  # LoRA merges into kernels only
  report = read(given, "report.json")
  assert report["selection"]["mode"] == "given" and report["selection"]["layers"] == [2]
  assert report["heal"]["layers"] == [1, 2] and report["heal"]["layers_spec"] == "neighbours"
  assert report["heal"]["lora_rank"] == 2 and report["heal"]["steps_run"] == 2


def test_report_measures_before_pruned_and_healed(given):
  report = read(given, "report.json")
  for name in ("before", "pruned", "healed"):
    m = report[name]
    assert 0.0 <= m["eval_accuracy"] <= 1.0 and np.isfinite(m["text_perplexity"])
    timing = m["forward_latency"]
    assert len(timing["times_s"]) == 2 and timing["min_s"] <= timing["median_s"] <= timing["max_s"]
    assert m["forward_latency_s"] == timing["median_s"] and timing["spread"] >= 0
  assert report["pruned"]["num_params"] == report["healed"]["num_params"] < report["before"]["num_params"]
  assert report["latency"]["runs"] == 2 and isinstance(report["latency"]["warnings"], list)
  with open(os.path.join(given, "prune", "report.md"), encoding="utf-8") as f:
    text = f.read()
  assert "| metric | before | pruned | healed |" in text and "Healed: 2 training steps (LoRA r=2" in text
  assert text.count("Warning: ") == len(report["latency"]["warnings"])


# --- healing the region, killed and resumed --------------------------------------------------

class PruneRun:
  """The prune command in a subprocess (tests/run_tiny_training.py --prune)."""

  def __init__(self, root, inputs, workdir: str, name: str, flags=()):
    self.workdir, self.log_path = workdir, str(root / f"{name}.log")
    command = [sys.executable, SCRIPT, "--prune", *flags, "--",
               *argv(inputs, workdir, **NO_EVAL, **{"prune.k": 1, "prune.heal_steps": HEAL_STEPS})]
    with open(self.log_path, "w", encoding="utf-8") as log:
      self.proc = subprocess.Popen(command, env=subprocess_env(root, 1), cwd=REPO, stdout=log,
                                   stderr=subprocess.STDOUT)

  def log(self) -> str:
    with open(self.log_path, encoding="utf-8") as f:
      return f.read()

  def finish(self, status: int = 0) -> "PruneRun":
    try:
      self.proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      pytest.fail(f"prune did not finish in {RUN_TIMEOUT}s:\n{self.log()[-4000:]}")
    assert self.proc.returncode == status, self.log()[-4000:]
    return self

  def losses(self) -> dict:
    with open(os.path.join(self.workdir, "prune", "heal", "metrics.jsonl"), encoding="utf-8") as f:
      return {r["step"]: r["loss"] for r in map(json.loads, filter(str.strip, f)) if "loss" in r}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return tmp_path_factory.mktemp("prune_heal_runs")


@pytest.fixture(scope="module")
def healed(root, inputs, trained):
  """An uninterrupted healing of the region (full update) after removing one layer."""
  workdir = train_fixtures.copy_tree(trained, str(root / "healed"))
  return PruneRun(root, inputs, workdir, "healed").finish()


def test_region_healing_changes_only_the_region_and_loads_in_transformers(healed):
  report = read(healed.workdir, "report.json")
  (removed,) = report["removed"]
  region_after = report["region"]["after"]
  assert report["heal"]["layers"] == region_after == [1 - (removed < 1)]
  moved = changed(tensors(healed.workdir, "prune", "pruned"), tensors(healed.workdir, "prune", "hf"))
  assert moved and {layer_of(k) for k in moved} == set(region_after)
  assert not [k for k in moved if "projector" in k]
  loaded = transformers.LlavaForConditionalGeneration.from_pretrained(os.path.join(healed.workdir, "prune", "hf"))
  assert loaded.config.text_config.num_hidden_layers == NUM_LAYERS - 1 and removed not in REGION
  assert sorted(healed.losses()) == list(range(1, HEAL_STEPS + 1))


def test_healing_killed_after_a_checkpoint_resumes_bit_exactly(root, inputs, trained, healed):
  workdir = train_fixtures.copy_tree(trained, str(root / "killed"))
  marker = str(root / "killed.marker")
  checkpoint = os.path.join(workdir, "prune", "heal", "checkpoints", "2")
  run = PruneRun(root, inputs, workdir, "killed", flags=["--stall-after-step", "3", "--marker", marker])
  deadline = time.time() + RUN_TIMEOUT
  try:
    while not (os.path.exists(marker) and os.path.isdir(checkpoint)):
      assert run.proc.poll() is None, run.log()[-4000:]
      assert time.time() < deadline, run.log()[-4000:]
      time.sleep(0.05)
  finally:
    if run.proc.poll() is None:
      os.kill(run.proc.pid, signal.SIGKILL)
    run.proc.wait(timeout=60)
  assert not os.path.exists(os.path.join(workdir, "prune", "hf"))
  resumed = PruneRun(root, inputs, workdir, "resumed").finish()
  assert "resumed from step 2" in resumed.log()
  assert resumed.losses() == healed.losses()
  assert changed(tensors(healed.workdir, "prune", "hf"), tensors(workdir, "prune", "hf")) == set()


def test_sigterm_during_healing_checkpoints_and_exits_as_train_does(root, inputs, trained, healed):
  """SIGTERM after healing step 3: checkpoint 3, the line naming it, exit 143, no
  traceback. (After `healed`, whose compiled programs the cache then holds.)"""
  workdir = train_fixtures.copy_tree(trained, str(root / "sigterm"))
  run = PruneRun(root, inputs, workdir, "sigterm", flags=["--signal-after-step", "3", "--signal", "TERM"])
  run.finish(status=128 + signal.SIGTERM)
  checkpoint = os.path.join(workdir, "prune", "heal", "checkpoints", "3")
  assert f"stopped by SIGTERM after step 3; checkpoint {checkpoint}; run the same command again" in run.log()
  assert "Traceback" not in run.log() and os.path.isdir(checkpoint)
