"""tools/region_study.py end to end on tiny models: 2 seeds, 2 steps per arm, pruning
with one healing step.

Checks what a user reads: every cell of the tables carries an interval, the seeds
really differ, healing is measured, every plot is a PNG, and a second run reads the
finished pieces back instead of training again or loading the trained exports. The
statistics themselves are tested in test_bootstrap.py.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import train_fixtures
from PIL import Image

from visregion_jax import prune

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "region_study.py")
PLOTS = ("accuracy_by_strategy.png", "text_perplexity_by_strategy.png", "accuracy_by_layers_pruned.png",
         "text_perplexity_by_layers_pruned.png", "layer_scores_uniform.png")
INTERVAL = re.compile(r"^[+-]?\d+\.\d+ \[[+-]?\d+\.\d+, [+-]?\d+\.\d+\]")


def table_rows(markdown: str) -> list:
  """Cells of every table body row (header and separator rows left out)."""
  lines = markdown.splitlines()
  rows = []
  for i, line in enumerate(lines):
    if line.startswith("|") and not line.startswith("|---") and not lines[i + 1].startswith("|---"):
      rows.append([c.strip() for c in line.strip("|").split("|")])
  return rows


def run_study(argv: list) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, TOOL] + argv, capture_output=True, text=True, cwd=REPO, check=False)


def test_help():
  done = run_study(["--help"])
  assert done.returncode == 0, done.stderr
  assert "--seeds" in done.stdout and "--prune-arms" in done.stdout


def test_bad_flags_exit_2_before_work(tmp_path):
  done = run_study(["--workdir", str(tmp_path), "--out", str(tmp_path), "--arms", "uniform,sideways"])
  assert done.returncode == 2 and "--arms" in done.stderr
  done = run_study(["--workdir", str(tmp_path), "--out", str(tmp_path), "--seeds", "0"])
  assert done.returncode == 2 and "--seeds" in done.stderr


SLOW = pytest.mark.skipif(not os.environ.get("VISREGION_SLOW_TESTS"),
                          reason="two arms and k = 1..2 take ~8 min on 2 CPU cores; set VISREGION_SLOW_TESTS=1")


@pytest.mark.parametrize("arms, max_k", [(("uniform",), 1), pytest.param(("uniform", "scored"), 2, marks=SLOW)])
def test_study_on_tiny_models(tmp_path, arms, max_k):
  """The default suite runs one arm and k = 1 (~4 min on 2 cores); the slow variant
  adds the scored arm (its comparison with uniform) and k = 2."""
  inputs = train_fixtures.build_inputs(str(tmp_path / "inputs"), num_layers=8)
  work, out = str(tmp_path / "work"), str(tmp_path / "out")
  argv = ["--workdir", work, "--out", out, "--seeds", "2", "--arms", ",".join(arms), "--prune-k", str(max_k),
          "--prune-arms", "uniform"] + train_fixtures.overrides(
      inputs, str(tmp_path / "unused"), **{"train.steps": 2, "prune.calibration_samples": 8,
                                           "prune.latency_runs": 1, "prune.heal_steps": 1,
                                           "region.probe_samples": 8})
  done = run_study(argv)
  assert done.returncode == 0, done.stderr[-3000:]

  with open(os.path.join(out, "study.md"), encoding="utf-8") as f:
    rows = table_rows(f.read())
  arm_rows = [r for r in rows if r[0] in ("base (untrained)",) + arms]
  assert [r[0] for r in arm_rows] == ["base (untrained)", *arms]
  for row in arm_rows:
    assert INTERVAL.match(row[-1]) and INTERVAL.match(row[-2]), row
  comparisons = {r[0]: r for r in rows if " - " in r[0]}
  assert set(comparisons) == {"uniform - base"} | ({"scored - uniform"} if "scored" in arms else set())
  for row in comparisons.values():
    assert row[1].endswith(("higher", "lower", "not separable")), row
  ks = [str(k) for k in range(max_k + 1)]
  prune_rows = [r for r in rows if r[0] in ks]
  assert [r[0] for r in prune_rows] == ks
  for row in prune_rows[1:]:
    assert all(INTERVAL.match(cell) for cell in row[2:7]), row  # pruned and healed, with intervals
  for name in PLOTS:
    with Image.open(os.path.join(out, name)) as image:
      assert image.format == "PNG"
      image.load()

  results = json.load(open(os.path.join(out, "results.json"), encoding="utf-8"))
  assert results["seeds"] == [0, 1] and results["heal_steps"] == 1
  uniform = results["runs"]["arms"]["uniform"]
  assert [r["trained_layers"] for r in uniform] == [[1, 7], [1, 7]]
  assert [r["seed"] for r in uniform] == [0, 1]
  assert uniform[0]["text_sample_losses"] != uniform[1]["text_sample_losses"]  # the seeds trained differently
  for scored in results["runs"]["arms"].get("scored", []):
    assert len(scored["trained_layers"]) == 2
  for seed in results["runs"]["pruned"]["uniform"]:
    removed = [seed["k"][k]["removed"] for k in ks[1:]]
    assert [len(r) for r in removed] == list(range(1, max_k + 1)) and not set(removed[-1]) & {1, 7}
    assert seed["k"][ks[-1]]["healed"]["heal_layers"] == list(prune.remap_layers((1, 7), removed[-1]))
  estimate = results["arms"]["uniform"]["accuracy"]
  assert estimate["low"] <= estimate["mean"] <= estimate["high"]

  for seed in range(2):  # a finished seed's pruning reads back without the trained export
    shutil.rmtree(os.path.join(work, f"seed{seed}", "arms", "uniform", "hf"))
  again = run_study(argv)
  assert again.returncode == 0, again.stderr[-3000:]
  assert (again.stderr + again.stdout).count("finished earlier") == 2 * len(arms)
