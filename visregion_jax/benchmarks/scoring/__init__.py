"""Benchmark scores equal to lmms-eval's (0.7.3): one function per task, named as lmms-eval names it.

`score(task, rows)` takes the benchmark's rows (their dataset fields plus `prediction`, the
model's raw text) and returns the task's metrics under lmms-eval's names and scales; the
ones lmms-eval does not have (POPE under LLaVA-1.5's parsing, MMLU per subject) have their
own names. Everything runs without lmms-eval, which only the tests import to check the
numbers are the same.
"""

from visregion_jax.benchmarks.scoring import choice, mmbench, mme, mmlu, mmmu, pope, vqa
from visregion_jax.errors import VisRegionError

TASKS = {
  "gqa": vqa.gqa,
  "textvqa_val": vqa.textvqa_val,
  "vqav2_val": vqa.vqav2_val,
  "pope": pope.pope,
  "mme": mme.mme,
  "scienceqa_img": choice.scienceqa_img,
  "seedbench": choice.seedbench,
  "mmbench_en_dev": mmbench.mmbench_en_dev,
  "mmmu_val": mmmu.mmmu_val,
  "mmlu": mmlu.mmlu,
}


def check_task(task: str) -> None:
  """A task name this module scores, or bad input naming `--task` and the known tasks."""
  if task not in TASKS:
    raise VisRegionError("--task", f"expected one of {', '.join(TASKS)}, got {task!r}")


def score(task: str, rows: list, where: list = None) -> dict:
  """The task's metrics over `rows`; `where[i]` names row i in errors (default "row i+1")."""
  check_task(task)
  where = [f"row {i + 1}" for i in range(len(rows))] if where is None else list(where)
  if not rows:
    raise VisRegionError(task, "expected at least one row to score")
  for row, w in zip(rows, where):
    if not isinstance(row, dict):
      raise VisRegionError(w, f"expected an object of the row's fields, got {type(row).__name__}")
  return TASKS[task](rows, where)
