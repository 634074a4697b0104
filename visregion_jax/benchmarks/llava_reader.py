"""A benchmark task read from LLaVA-1.5's evaluation layout (`playground/data/eval/<dir>/`).

The question file and the answer files are read and joined when the task is opened
(llava_joins.py; they are small), the image folder must exist, and images are read from
it only when a sample is used, each path resolved inside the folder first.
"""

import os
from typing import Iterator, Optional

from visregion_jax.benchmarks import images as lazy
from visregion_jax.benchmarks import llava_files, tasks
from visregion_jax.benchmarks.images import Images
from visregion_jax.benchmarks.llava_joins import JOINS
from visregion_jax.benchmarks.sample import Sample


class LlavaTask:
  """A task's questions joined with their answers, and the folder their images are in."""

  layout = "llava"

  def __init__(self, task: tasks.Task, root: str):
    spec = task.llava
    self.task = task
    root = os.path.realpath(root)
    self.files = tuple(os.path.join(root, f) for f in (spec.question_file, *spec.answer_files))
    self.image_root = llava_files.folder(root, spec.image_dir)
    self._rows = JOINS[spec.join](root, spec)

  def __len__(self) -> int:
    return len(self._rows)

  def samples(self, start: int = 0, stop: Optional[int] = None) -> Iterator[Sample]:
    for index in range(start, len(self) if stop is None else min(stop, len(self))):
      fields, paths = self._rows[index]
      what = f"{self.task.name} sample {index}"
      yield Sample(index, dict(fields), Images([lazy.from_file(self.image_root, p, what) for p in paths], what))

  def exemplars(self, sample: Sample) -> tuple:
    return ()
