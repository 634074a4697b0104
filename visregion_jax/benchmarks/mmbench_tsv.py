"""MMBench from OpenMMLab's tsv (mmbench_dev_20230712.tsv, LLaVA-1.5's copy), streamed.

One row per question, images inline as base64. The file is scanned once when opened
(the header must name the columns read, every row must have the header's width and an
integer index) without keeping anything, and streamed again when iterated, so its
hundreds of MB of base64 never sit in memory. Cells are read as LLaVA read them, with
pandas' `read_table`: a cell pandas takes for missing ("", "nan", "None", "N/A", ...) is
None, which is how an absent hint or option shows.
"""

import csv
import os
from typing import Iterator, Optional

from visregion_jax.benchmarks import images as lazy
from visregion_jax.benchmarks import tasks
from visregion_jax.benchmarks.images import Images
from visregion_jax.benchmarks.sample import Sample
from visregion_jax.errors import VisRegionError

# The strings pandas reads as NaN by default (pandas.read_table's na_values).
PANDAS_MISSING = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                            "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
# tsv column -> field name (the Hugging Face dataset calls the second category "L2-category").
_FIELDS = {"index": "index", "question": "question", "hint": "hint", "A": "A", "B": "B", "C": "C", "D": "D",
           "answer": "answer", "category": "category", "l2-category": "L2-category"}
_MAX_CELL = 1 << 30  # a base64 image cell can be megabytes; the csv module stops at 128 KiB by default


class MMBenchTsv:
  """The tsv's rows as samples: fields under the dataset's names, the base64 image lazy."""

  layout = "llava"

  def __init__(self, task: tasks.Task, root: str):
    self.task = task
    self.path = os.path.join(root, task.llava.question_file)
    self.files = (self.path,)
    self._count = sum(1 for _ in self._rows(check=True))

  def _rows(self, check: bool = False) -> Iterator[tuple]:
    csv.field_size_limit(max(csv.field_size_limit(), _MAX_CELL))
    try:
      with open(self.path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, [])
        missing = [name for name in (*_FIELDS, "image") if name not in header]
        if missing:
          raise VisRegionError(self.path, f"expected the columns {', '.join(missing)} of MMBench's tsv; "
                               f"the header has {', '.join(header)}")
        for row in reader:
          where = f"{self.path}:{reader.line_num}"
          if check and len(row) != len(header):
            raise VisRegionError(where, f"expected {len(header)} tab-separated cells, got {len(row)}")
          cells = dict(zip(header, row))
          if check and not cells["index"].lstrip("-").isdigit():
            raise VisRegionError(where, f"expected an integer index, got {cells['index']!r}")
          yield where, cells
    except FileNotFoundError:
      raise VisRegionError(self.path, "file not found (LLaVA's evaluation layout; see docs/evaluation.md)") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
      raise VisRegionError(self.path, f"expected a readable UTF-8 tsv ({e})") from None

  def __len__(self) -> int:
    return self._count

  def samples(self, start: int = 0, stop: Optional[int] = None) -> Iterator[Sample]:
    stop = len(self) if stop is None else min(stop, len(self))
    for index, (_, cells) in enumerate(self._rows()):
      if index >= stop:
        return
      if index >= start:
        fields = {name: None if cells[column] in PANDAS_MISSING else cells[column] for column, name in _FIELDS.items()}
        fields["index"] = int(cells["index"])
        what = f"{self.task.name} sample {index}"
        yield Sample(index, fields, Images([lazy.from_base64(cells["image"], what)], what))

  def exemplars(self, sample: Sample) -> tuple:
    return ()
