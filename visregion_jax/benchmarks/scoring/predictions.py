"""Reading a predictions file: one JSON object per line, a benchmark row's fields plus `prediction`.

It is what the evaluation writes to `WORKDIR/eval/<task>.jsonl` and what `evaluate score`
re-scores; each row keeps its `FILE:LINE` so a bad row is named where a user can find it.
Blank lines are allowed (a file being appended to may end in one).
"""

import json

from visregion_jax.errors import VisRegionError


def read_predictions(path: str) -> tuple:
  """(rows, where): the objects of the file's lines and "FILE:LINE" of each."""
  rows, where = [], []
  with open(path, encoding="utf-8") as f:
    try:
      lines = f.read().split("\n")  # not splitlines(): JSON text may hold a raw U+2028
    except UnicodeDecodeError:
      raise VisRegionError(path, "expected UTF-8 text, one JSON object per line") from None
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise VisRegionError(f"{path}:{number}", f"expected one JSON object per line ({e.msg})") from None
    if not isinstance(row, dict):
      raise VisRegionError(f"{path}:{number}", f"expected a JSON object, got {type(row).__name__}")
    rows.append(row)
    where.append(f"{path}:{number}")
  if not rows:
    raise VisRegionError(path, "expected at least one JSON line of a row and its prediction")
  return rows, where
