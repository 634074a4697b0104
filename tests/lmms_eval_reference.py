"""lmms-eval's own scoring code, the reference of the tests of visregion_jax.benchmarks.scoring.

lmms-eval (0.7.3, installed test-only with `pip install --no-deps`, as the Makefile does) is
imported from its installed files, with four stand-ins in `sys.modules` while a test module
runs, none of them computing anything a score depends on:
- `lmms_eval.tasks`: the package itself, with its real directory as its path but without its
  `__init__`, which builds the task registry (datasets, torch, ...); the task files below it
  load as they are.
- `lmms_eval.api.registry`: decorators that return the function unchanged, for
  `lmms_eval/api/metrics.py` (the real ones only file the metric in a registry).
- `sacrebleu`: an empty module; metrics.py uses it only in BLEU, chrF and TER.
- `loguru` when it is not installed: a logger that drops its messages (MME's aggregation
  logs each category's score).
Other packages they import (numpy, pyyaml, pandas for MMBench) are the real ones.
"""

import contextlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import types

import pytest
import yaml

VERSION = "0.7.3"
# The reasoning blocks lmms-eval's command line cuts from every answer (its default
# --reasoning_tags); test_cli_default_reasoning_tags checks this is still its default.
CLI_REASONING_TAGS = [["<think>", "</think>"], ["<analysis>", "</analysis>"]]


def root() -> str:
  """lmms-eval's installed package directory; skips the calling test when it is not there."""
  spec = importlib.util.find_spec("lmms_eval")
  if spec is None:
    pytest.skip("lmms-eval is not installed (test-only reference: pip install --no-deps lmms-eval==0.7.3)")
  version = importlib.metadata.version("lmms_eval")
  if version != VERSION:
    pytest.skip(f"lmms-eval {version} is installed; these tests compare with {VERSION}")
  return spec.submodule_search_locations[0]


class _QuietLogger:
  def __getattr__(self, name):
    return lambda *args, **kwargs: None


def _stand_ins(package_dir: str) -> dict:
  tasks = types.ModuleType("lmms_eval.tasks")
  tasks.__path__ = [os.path.join(package_dir, "tasks")]
  registry = types.ModuleType("lmms_eval.api.registry")
  registry.register_aggregation = registry.register_metric = lambda *args, **kwargs: (lambda fn: fn)
  modules = {"lmms_eval.tasks": tasks, "lmms_eval.api.registry": registry, "sacrebleu": types.ModuleType("sacrebleu")}
  if importlib.util.find_spec("loguru") is None:
    modules["loguru"] = types.ModuleType("loguru")
    modules["loguru"].logger = _QuietLogger()
  return modules


@contextlib.contextmanager
def loaded():
  """Yields `load(name)`, which imports lmms_eval.<name> (e.g. "tasks.pope.utils") with the
  stand-ins; they stay until the block ends (some functions import at call time)."""
  package_dir = root()
  stand_ins = _stand_ins(package_dir)
  saved = {name: sys.modules[name] for name in stand_ins if name in sys.modules}
  sys.modules.update(stand_ins)
  try:
    yield lambda name: importlib.import_module(f"lmms_eval.{name}")
  finally:
    for name in [n for n in sys.modules if n == "lmms_eval" or n.startswith("lmms_eval.") or n in stand_ins]:
      del sys.modules[name]
    sys.modules.update(saved)


def cleaned(response: str, lmms) -> str:
  """An answer as lmms-eval's command line hands it to a task: reasoning blocks cut, stripped."""
  return lmms("api.reasoning").strip_reasoning_tags(response, CLI_REASONING_TAGS)


class _TaskLoader(yaml.SafeLoader):
  """lmms-eval's task yaml, its `!function utils.name` values read as their text."""


_TaskLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def task_config(relative_path: str) -> dict:
  """A task yaml under lmms_eval/tasks/, merged over the file it `include`s."""
  path = os.path.join(root(), "tasks", relative_path)
  with open(path, encoding="utf-8") as f:
    config = yaml.load(f, _TaskLoader)
  if "include" in config:
    config = {**task_config(os.path.join(os.path.dirname(relative_path), config["include"])), **config}
  return config


def metric_names(relative_path: str) -> list:
  return [m["metric"] for m in task_config(relative_path)["metric_list"]]
