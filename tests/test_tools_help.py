"""Every script in tools/ starts and prints its usage.

The benchmarks take minutes and are never run by the suite, so a broken import
between their sibling modules (bench_jax_step, bench_measure, ...) or a renamed
library module would otherwise go unnoticed; `--help` imports all of a script's
modules and stops before any work.
"""

import glob
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def is_script(path: str) -> bool:
  """A file that runs something when executed; the other files in tools/ are its helpers."""
  with open(path, encoding="utf-8") as f:
    return 'if __name__ == "__main__":' in f.read()


SCRIPTS = sorted(p for p in glob.glob(os.path.join(REPO, "tools", "*.py")) if is_script(p))


def test_tools_have_scripts():
  assert {"bench_train_step.py", "bench_data.py"} <= {os.path.basename(p) for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_help(script):
  done = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, cwd=REPO,
                        timeout=120, check=False)
  assert done.returncode == 0, done.stderr
  assert done.stdout.startswith("usage:"), done.stdout
