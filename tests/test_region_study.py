"""tools/region_study.py end to end on tiny models: 2 steps per arm, pruning k = 1..4.

Checks what a user reads: every cell of both tables is filled, every plot is a PNG
PIL can decode, and a second run reads the finished pieces back instead of
training again.
"""

import json
import os
import subprocess
import sys

import train_fixtures
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "region_study.py")
ARMS = ("full", "uniform", "bottom", "top", "projector")
PLOTS = ("accuracy_by_strategy.png", "text_perplexity_by_strategy.png", "accuracy_by_layers_pruned.png",
         "layer_scores_uniform.png", "layer_scores_full.png")


def table_rows(markdown: str) -> list:
  """Cells of every table body row (header and separator rows left out)."""
  rows = [line for line in markdown.splitlines() if line.startswith("|")]
  return [[c.strip() for c in r.strip("|").split("|")] for r in rows
          if not r.startswith("|---") and not r.startswith("| arm") and not r.startswith("| trained arm")]


def run_study(argv: list) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, TOOL] + argv, capture_output=True, text=True, cwd=REPO, check=False)


def test_help():
  done = run_study(["--help"])
  assert done.returncode == 0, done.stderr
  assert "--prune-k" in done.stdout and "--workdir" in done.stdout


def test_study_on_tiny_models(tmp_path):
  inputs = train_fixtures.build_inputs(str(tmp_path / "inputs"), num_layers=8)
  work, out = str(tmp_path / "work"), str(tmp_path / "out")
  argv = ["--workdir", work, "--out", out, "--prune-k", "4"] + train_fixtures.overrides(
      inputs, str(tmp_path / "unused"), **{"train.steps": 2, "prune.calibration_samples": 8})
  done = run_study(argv)
  assert done.returncode == 0, done.stderr[-3000:]

  with open(os.path.join(out, "study.md"), encoding="utf-8") as f:
    rows = table_rows(f.read())
  arm_rows = [r for r in rows if len(r) == 8]
  prune_rows = [r for r in rows if len(r) == 7]
  assert [r[0] for r in arm_rows] == ["base (untrained)"] + list(ARMS)
  assert [(r[0], r[1]) for r in prune_rows] == [(a, str(k)) for a in ("uniform", "full") for k in range(5)]
  for row in rows:
    assert all(cell and cell != "n/a" for cell in row), row
  for name in PLOTS:
    with Image.open(os.path.join(out, name)) as image:
      assert image.format == "PNG"
      image.load()

  results = json.load(open(os.path.join(out, "results.json"), encoding="utf-8"))
  # 8 layers, fraction 0.25: two layers; uniform takes one per half, the others stack.
  assert results["arms"]["uniform"]["trained_layers"] == [1, 7]
  assert results["arms"]["bottom"]["trained_layers"] == [0, 1]
  assert results["arms"]["top"]["trained_layers"] == [6, 7]
  assert results["arms"]["full"]["trained_layers"] == list(range(8))
  assert results["arms"]["projector"]["trained_layers"] == []
  for arm in ("uniform", "full"):
    removed = [results["pruned"][arm]["k"][str(k)]["removed"] for k in range(5)]
    assert [len(r) for r in removed] == [0, 1, 2, 3, 4]
    assert not set(removed[4]) & {1, 7}  # never a layer of the uniform region
  # Optimizer state: Adam's two moments of exactly the trainable parameters (fp32).
  for arm in ARMS:
    r = results["arms"][arm]
    assert r["optimizer_bytes"] >= 2 * 4 * r["trainable_params"]
  assert results["arms"]["projector"]["optimizer_bytes"] < results["arms"]["uniform"]["optimizer_bytes"]

  again = run_study(argv)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stderr.count("finished earlier") + again.stdout.count("finished earlier") == len(ARMS)
  assert "training arm" not in again.stdout + again.stderr


def test_too_many_layers_to_prune_is_one_error_line(tmp_path):
  inputs = train_fixtures.build_inputs(str(tmp_path / "inputs"))  # 4 layers, 1 in the region
  argv = ["--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--prune-k", "4"] + \
      train_fixtures.overrides(inputs, str(tmp_path / "unused"))
  done = run_study(argv)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1].startswith("error: --prune-k")
  assert not os.path.exists(os.path.join(tmp_path, "work", "arms"))
