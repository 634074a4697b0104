"""Every command's `--help` exits 0 and says what it takes; the config-driven commands
list every config key with its value and meaning."""

import os
import subprocess
import sys

import pytest

from visregion_jax.config.defaults import KEYS
from visregion_jax.convert.__main__ import main as convert_main
from visregion_jax.evaluate.__main__ import main as evaluate_main
from visregion_jax.generate.__main__ import main as generate_main
from visregion_jax.prune.__main__ import main as prune_main
from visregion_jax.train.__main__ import main as train_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("main, prog", [(train_main, "visregion_jax.train"), (prune_main, "visregion_jax.prune")])
def test_config_commands_list_every_key(main, prog, capsys):
  assert main(["--help"]) == 0
  out = capsys.readouterr().out
  assert out.startswith(f"usage: python -m {prog} --config FILE.py")
  for key, default, meaning in KEYS:
    assert f"  {key} = {default!r}\n      {meaning}" in out, key


def test_help_shows_the_given_config(capsys):
  assert train_main(["--config", os.path.join(REPO, "configs", "demo.py"), "--config.train.steps=7", "-h"]) == 0
  out = capsys.readouterr().out
  assert "  train.steps = 7\n" in out and "  hook = 'visregion_jax.demo'\n" in out
  assert "  demo.data_root = " in out  # a key the demo config adds


def test_evaluate_help_names_both_forms_and_the_benchmark_keys(capsys):
  assert evaluate_main(["--help"]) == 0
  out = capsys.readouterr().out
  assert out.startswith("usage: python -m visregion_jax.evaluate") and "evaluate score --task" in out
  assert "  eval.tasks = ''\n" in out and "  eval.data.pope = ''\n" in out


@pytest.mark.parametrize("main, args", [(convert_main, ["--help"]), (convert_main, ["to-hf", "--help"]),
                                        (convert_main, ["from-hf", "--help"]), (convert_main, ["to-gguf", "--help"]),
                                        (generate_main, ["--help"]), (evaluate_main, ["score", "--help"])])
def test_argparse_commands(main, args, capsys):
  with pytest.raises(SystemExit) as exit_info:
    main(args)
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith("usage: python -m visregion_jax.") and "--" in out


@pytest.mark.parametrize("command", ["train", "prune", "convert", "generate", "evaluate"])
def test_python_dash_m_help(command):
  """What a user types: `python -m visregion_jax.X --help`."""
  proc = subprocess.run([sys.executable, "-m", f"visregion_jax.{command}", "--help"], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith(f"usage: python -m visregion_jax.{command}")
