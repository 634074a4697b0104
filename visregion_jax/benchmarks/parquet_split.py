"""One split of a Hugging Face dataset in parquet files: found, checked, streamed.

The files are the ones `huggingface-cli download <repo> --repo-type dataset` leaves on
disk; nothing is fetched. Opening reads the files' footers only: each listed column must
be there, and each image column must hold the `datasets` Image struct (`{bytes, path}`),
or the open fails naming the file and the column, before any model is loaded. Rows are
then read a batch at a time, so a multi-GB split never sits in memory.
"""

import glob
import os
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from visregion_jax.benchmarks import tasks
from visregion_jax.errors import VisRegionError

BATCH_ROWS = 64  # rows decoded from parquet at a time (their images stay encoded)


def split_files(root: str, spec: tasks.Parquet) -> list:
  """The split's files under `root` in shard order (subject folders in name order); [] if none.

  Hub snapshots name shards `<config_dir>/<split>-00000-of-00003.parquet`; the Hub's
  parquet conversion uses `<config_dir>/<split>/0000.parquet`. Either is accepted.
  """
  folders = sorted(glob.glob(os.path.join(glob.escape(root), spec.config_dir)))
  for pattern in (f"{spec.split}-*.parquet", os.path.join(spec.split, "*.parquet")):
    files = sorted(f for folder in folders for f in glob.glob(os.path.join(glob.escape(folder), pattern)))
    if files:
      return files
  return []


def _is_image(t: pa.DataType) -> bool:
  if not pa.types.is_struct(t) or t.get_field_index("bytes") < 0:
    return False
  data = t.field("bytes").type
  return pa.types.is_binary(data) or pa.types.is_large_binary(data)


def _is_image_list(t: pa.DataType) -> bool:
  return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_image(t.value_type)


class ParquetSplit:
  """The files of one split, opened and checked for `columns` and `image_columns`."""

  def __init__(self, root: str, spec: tasks.Parquet, columns: tuple, image_columns: tuple = (),
               image_lists: bool = False):
    self.spec, self.columns = spec, tuple(columns) + tuple(image_columns)
    self.files = split_files(root, spec)
    if not self.files:
      raise VisRegionError(root, f"expected the parquet files of {spec.repo} (config {spec.config}, split "
                           f"{spec.split}) as {spec.config_dir}/{spec.split}-*.parquet; see docs/evaluation.md")
    self._parquet = [self._open(path) for path in self.files]
    for path, parquet in zip(self.files, self._parquet):
      self._check(path, parquet.schema_arrow, columns, image_columns, image_lists)

  @staticmethod
  def _open(path: str) -> pq.ParquetFile:
    try:
      return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
      raise VisRegionError(path, f"expected a parquet file ({e})") from None

  def _check(self, path: str, schema: pa.Schema, columns, image_columns, image_lists: bool) -> None:
    for name in tuple(columns) + tuple(image_columns):
      if name not in schema.names:
        raise VisRegionError(path, f"expected column {name!r} of {self.spec.repo} (config {self.spec.config}, "
                             f"split {self.spec.split}); the file has {', '.join(schema.names)}")
    is_image = _is_image_list if image_lists else _is_image
    for name in image_columns:
      if not is_image(schema.field(name).type):
        kind = "a list of images" if image_lists else "an image"
        raise VisRegionError(path, f"expected column {name!r} to hold {kind} (the datasets Image struct "
                             f"{{bytes, path}}); it holds {schema.field(name).type}")

  def __len__(self) -> int:
    return sum(parquet.metadata.num_rows for parquet in self._parquet)

  def rows(self, start: int = 0, stop: Optional[int] = None) -> Iterator[tuple]:
    """(index, row) for rows [start, stop) in order; row groups outside are not read."""
    stop = len(self) if stop is None else min(stop, len(self))
    index = 0
    for path, parquet in zip(self.files, self._parquet):
      for group in range(parquet.num_row_groups):
        size = parquet.metadata.row_group(group).num_rows
        if index >= stop:
          return
        if index + size <= start:
          index += size
          continue
        try:
          batches = list(parquet.iter_batches(BATCH_ROWS, row_groups=[group], columns=list(self.columns)))
        except (pa.ArrowException, OSError) as e:
          raise VisRegionError(f"{path} row group {group}", f"expected readable parquet data ({e})") from None
        for batch in batches:
          for row in batch.to_pylist():
            if start <= index < stop:
              yield index, row
            index += 1

  def column_groups(self, column: str) -> Iterator[tuple]:
    """((file, row group), values of `column` in it) for every row group, in order."""
    for number, parquet in enumerate(self._parquet):
      for group in range(parquet.num_row_groups):
        yield (number, group), self.read_group((number, group), column)

  def read_group(self, where: tuple, column: str) -> list:
    number, group = where
    try:
      return self._parquet[number].read_row_group(group, columns=[column]).column(0).to_pylist()
    except (pa.ArrowException, OSError) as e:
      raise VisRegionError(f"{self.files[number]} row group {group}",
                           f"expected readable parquet data ({e})") from None
