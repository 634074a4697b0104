"""A benchmark task read from its Hugging Face dataset's parquet files.

Each row becomes a `Sample`: the columns tasks.py lists as its fields, and its image
cells as lazy images following the task's image rule (one column, an optional one, a
list of frames, MMMU's referenced `image_i` columns, or GQA's images joined from their
own config by id). MMLU's few-shot exemplars come from its dev split, read whole at open
(5 rows a subject).
"""

import collections
import re
import threading
from typing import Iterator, Optional

from visregion_jax.benchmarks import images as lazy
from visregion_jax.benchmarks import tasks
from visregion_jax.benchmarks.images import Images
from visregion_jax.benchmarks.parquet_split import ParquetSplit
from visregion_jax.benchmarks.sample import Sample

# Row groups of a joined image table kept in memory once read (their images still
# encoded): Hub image datasets hold ~100 images a row group, so GQA's 398 test-dev images
# are read once; a larger table is re-read as questions revisit its groups.
CACHED_ROW_GROUPS = 8
_IMAGE_TAG = re.compile(r"<image (\d+)>")


def referenced_images(fields) -> list:
  """The image columns an MMMU row uses: the `<image i>` its question names, and its
  options for a multiple-choice row, each once, in order of i (as lmms-eval picks them)."""
  text = fields["question"]
  if fields.get("question_type") == "multiple-choice":
    text += str(fields["options"])
  return [f"image_{i}" for i in sorted({int(i) for i in _IMAGE_TAG.findall(text)})]


class JoinedImages:
  """Images stored in another config, found by id (GQA: testdev_balanced_images by imageId).

  Opening reads the id column only; an image's row group is read when the image is."""

  def __init__(self, root: str, spec: tasks.Parquet):
    table = spec.image_table
    self.table = table
    self._split = ParquetSplit(root, tasks.Parquet(spec.repo, table.config_dir, table.config_dir, table.split, ()),
                               (table.id_column,), (table.image_column,))
    self._where = {}
    for where, ids in self._split.column_groups(table.id_column):
      for row, image_id in enumerate(ids):
        self._where.setdefault(image_id, (where, row))
    self.files = list(self._split.files)
    self._groups = collections.OrderedDict()
    self._lock = threading.Lock()

  def fetch(self, image_id, what: str) -> lazy.Fetch:
    if image_id not in self._where:
      return lazy.missing(what, f"no image with {self.table.id_column} {image_id!r} in {self.table.config_dir}")
    where, row = self._where[image_id]
    return lambda: lazy.from_struct(self._cells(where)[row], what)()

  def _cells(self, where: tuple) -> list:
    with self._lock:
      if where not in self._groups:
        self._groups[where] = self._split.read_group(where, self.table.image_column)
        if len(self._groups) > CACHED_ROW_GROUPS:
          self._groups.popitem(last=False)
      self._groups.move_to_end(where)
      return self._groups[where]


class ParquetTask:
  """A task's split in parquet files: its size, its samples in order, its exemplars."""

  layout = "parquet"

  def __init__(self, task: tasks.Task, root: str):
    spec = task.parquet
    self.task, self.spec = task, spec
    self._split = ParquetSplit(root, spec, spec.columns, spec.image_columns, spec.images == tasks.IMAGE_LIST)
    self._joined = JoinedImages(root, spec) if spec.images == tasks.JOINED else None
    self._exemplars = collections.defaultdict(list)
    files = list(self._split.files) + (self._joined.files if self._joined else [])
    if task.fewshot:
      fewshot = ParquetSplit(root, task.fewshot, task.fewshot.columns)
      for _, row in fewshot.rows():
        self._exemplars[row["subject"]].append(row)
      files += fewshot.files
    self.files = tuple(files)

  def __len__(self) -> int:
    return len(self._split)

  def samples(self, start: int = 0, stop: Optional[int] = None) -> Iterator[Sample]:
    for index, row in self._split.rows(start, stop):
      fields = {name: row[name] for name in self.spec.columns}
      what = f"{self.task.name} sample {index}"
      yield Sample(index, fields, Images(self._fetches(row, fields, what), what))

  def exemplars(self, sample: Sample) -> tuple:
    """The dev rows of the sample's subject, in file order (few-shot tasks; else none)."""
    return tuple(self._exemplars.get(sample.fields.get("subject"), ()))

  def _fetches(self, row: dict, fields: dict, what: str) -> list:
    """The row's image fetches under the task's image rule (tasks.py)."""
    rule, columns = self.spec.images, self.spec.image_columns
    if rule == tasks.ONE_IMAGE or (rule == tasks.OPTIONAL_IMAGE and row[columns[0]] is not None):
      return [lazy.from_struct(row[columns[0]], what)]
    if rule == tasks.IMAGE_LIST:
      return [lazy.from_struct(cell, what) for cell in row[columns[0]] or ()]
    if rule == tasks.REFERENCED:
      return [lazy.from_struct(row.get(name), what) for name in referenced_images(fields)]
    if rule == tasks.JOINED:
      return [self._joined.fetch(row[self.spec.image_table.key], what)]
    return []
