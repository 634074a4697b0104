"""Opening a benchmark task from a local folder: which layout it holds, checked up front.

`open_task(task, folder)` looks the task up in tasks.py, finds which published layout the
folder holds (the dataset's parquet files, or LLaVA-1.5's evaluation layout) and opens
it: parquet footers, question and answer files are read and checked there, so an unknown
task, a missing file, a missing column or a malformed line is a `VisRegionError` naming
the file (and column or line) before any model is loaded. Images are not touched.

What comes back (`TaskData`) has, whatever the layout:
  task (tasks.Task), layout ("parquet" or "llava"), files (the files read), len(),
  samples(start=0, stop=None) -> Sample in order (sample.py), and
  exemplars(sample) -> the few-shot rows for it (MMLU's dev rows; () elsewhere).
"""

import os
from typing import Iterator, Optional, Protocol

from visregion_jax.benchmarks import parquet_split, tasks
from visregion_jax.benchmarks.llava_reader import LlavaTask
from visregion_jax.benchmarks.mmbench_tsv import MMBenchTsv
from visregion_jax.benchmarks.parquet_reader import ParquetTask
from visregion_jax.benchmarks.sample import Sample
from visregion_jax.errors import VisRegionError

LAYOUTS = ("parquet", "llava")


class TaskData(Protocol):
  task: tasks.Task
  layout: str
  files: tuple

  def __len__(self) -> int: ...

  def samples(self, start: int = 0, stop: Optional[int] = None) -> Iterator[Sample]: ...

  def exemplars(self, sample: Sample) -> tuple: ...


def _found(task: tasks.Task, root: str) -> list:
  """The layouts whose files are in `root`: the parquet split, LLaVA's question file."""
  found = []
  if parquet_split.split_files(root, task.parquet):
    found.append("parquet")
  if task.llava and os.path.isfile(os.path.join(root, task.llava.question_file)):
    found.append("llava")
  return found


def _expected(task: tasks.Task) -> str:
  spec = task.parquet
  text = f"{spec.repo}'s parquet files {spec.config_dir}/{spec.split}-*.parquet"
  if task.llava:
    text += f" or LLaVA's {task.llava.question_file}"
  return text + " (docs/evaluation.md)"


def open_task(name: str, folder: Optional[str], layout: Optional[str] = None) -> TaskData:
  """Task `name` (lmms-eval's name) from `folder`, in `layout` or, by default, the one
  layout the folder holds."""
  task = tasks.task(name)
  if not folder:
    raise VisRegionError(f"eval.data.{name}", f"expected the folder holding {_expected(task)}")
  if not os.path.isdir(folder):
    raise VisRegionError(folder, f"expected a folder holding {_expected(task)}")
  if layout is not None and layout not in LAYOUTS:
    raise VisRegionError("layout", f"expected one of {', '.join(LAYOUTS)}, got {layout!r}")
  if layout == "llava" and task.llava is None:
    raise VisRegionError("layout", f"{name} has no LLaVA evaluation layout: expected its parquet files")
  found = [layout] if layout else _found(task, folder)
  if not found:
    raise VisRegionError(folder, f"expected {_expected(task)}")
  if len(found) > 1:
    raise VisRegionError(folder, f"holds both {name}'s parquet files and LLaVA's {task.llava.question_file}; "
                         "expected one layout (or the layout named)")
  if found[0] == "parquet":
    return ParquetTask(task, folder)
  return MMBenchTsv(task, folder) if task.llava.join == "mmbench" else LlavaTask(task, folder)
