"""One benchmark sample, the same record whichever layout it was read from."""

from dataclasses import dataclass
from typing import Mapping

from visregion_jax.benchmarks.images import Images


@dataclass(frozen=True)
class Sample:
  """A benchmark row: its position, its own fields and its (not yet decoded) images.

  `fields` are the row's non-image values under the names the task's parquet dataset
  gives them (`question_id`, `question`, `answer`, `answers`, `category`, option
  columns, ...; tasks.py lists them per task), as plain JSON values, so a prediction
  line is `{**fields, "prediction": text}` and scorers read one schema per task.
  `index` is the row's position in the task's order, from 0, the same on every process
  and every run: the key to resume and to shard by.
  """
  index: int
  fields: Mapping
  images: Images
