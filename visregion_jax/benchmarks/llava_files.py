"""Reading the JSON and JSON-lines files of LLaVA's evaluation layout, strictly.

Every problem is a `VisRegionError` naming the file (and line, or entry) and what was
expected, raised while the task is opened: a malformed question or answer file stops
the evaluation before any model is loaded, instead of scoring a partial benchmark.
"""

import json
import os

from visregion_jax.data import skip
from visregion_jax.data.sources import resolve_inside
from visregion_jax.errors import VisRegionError


def read_text(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except FileNotFoundError:
    raise VisRegionError(path, "file not found (LLaVA's evaluation layout; see docs/evaluation.md)") from None
  except (OSError, UnicodeDecodeError) as e:
    raise VisRegionError(path, f"expected a readable UTF-8 file ({e})") from None


def require(record, keys: tuple, where: str) -> dict:
  """`record` itself, once it is a JSON object holding every key."""
  if not isinstance(record, dict):
    raise VisRegionError(where, f"expected a JSON object, got {type(record).__name__}")
  for key in keys:
    if key not in record:
      raise VisRegionError(where, f"expected key {key!r}")
  return record


def require_list(value, where: str) -> list:
  if not isinstance(value, list):
    raise VisRegionError(where, f"expected a JSON list, got {type(value).__name__}")
  return value


def image_path(record: dict, key: str, where: str) -> str:
  """A question's image path: a non-empty string (checked now, resolved when loaded)."""
  value = record[key]
  if not isinstance(value, str) or not value:
    raise VisRegionError(where, f"expected {key!r} to be an image path, got {value!r}")
  return value


def read_jsonl(path: str, keys: tuple, texts: tuple = ()) -> list:
  """[(where, object)] for the non-blank lines of a JSON-lines file, each holding `keys`
  (those in `texts` as strings); `where` is "file:line" for later messages."""
  rows = []
  for number, line in enumerate(read_text(path).splitlines(), 1):
    if not line.strip():
      continue
    where = f"{path}:{number}"
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise VisRegionError(where, f"expected one JSON object per line ({e.msg} at column {e.colno})") from None
    require(record, keys, where)
    for key in texts:
      if not isinstance(record[key], str):
        raise VisRegionError(where, f"expected {key!r} to be a string, got {record[key]!r}")
    rows.append((where, record))
  if not rows:
    raise VisRegionError(path, "expected at least one question")
  return rows


def read_json(path: str, kind: type):
  """A whole JSON file whose top level is `kind` (dict or list)."""
  try:
    value = json.loads(read_text(path))
  except json.JSONDecodeError as e:
    raise VisRegionError(f"{path}:{e.lineno}:{e.colno}", f"expected valid JSON ({e.msg})") from None
  if not isinstance(value, kind):
    raise VisRegionError(path, f"expected a JSON {kind.__name__}, got {type(value).__name__}")
  return value


def folder(root: str, relative: str) -> str:
  """The real path of a folder the layout needs, under `root` (a real path)."""
  try:
    path = resolve_inside(root, relative, root)
  except skip.SkipSample:
    raise VisRegionError(os.path.join(root, relative), "expected a folder inside the task's folder") from None
  if not os.path.isdir(path):
    raise VisRegionError(path, "expected a folder (LLaVA's evaluation layout; see docs/evaluation.md)")
  return path
