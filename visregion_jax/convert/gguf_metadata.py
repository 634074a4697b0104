"""A GGUF file's scalar metadata, read from its header alone.

`gguf.GGUFReader` parses every key and tensor record (about 3 s for SmolLM2, whose
tokenizer arrays hold ~100k strings); validating a config needs only a couple of
numbers (the block count) before anything expensive runs, so this walks the key/value
section, skipping array payloads, and stops as soon as it has the keys asked for.
"""

import struct

from visregion_jax.errors import VisRegionError

# GGUF value types: struct format of the scalars; 8 = string, 9 = array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


class _Cursor:
  def __init__(self, f, where: str):
    self.f, self.where = f, where

  def read(self, fmt: str):
    size = struct.calcsize("<" + fmt)
    data = self.f.read(size)
    if len(data) != size:
      raise VisRegionError(self.where, "expected a complete GGUF header (the file ends early)")
    return struct.unpack("<" + fmt, data)[0]

  def string(self, raw: bool = False):
    length = self.read("Q")
    data = self.f.read(length)
    if len(data) != length:
      raise VisRegionError(self.where, "expected a complete GGUF header (the file ends early)")
    return data if raw else data.decode("utf-8", errors="replace")

  def value(self, kind: int, keep: bool, raw: bool = False):
    if kind in _SCALARS:
      return self.read(_SCALARS[kind])
    if kind == STRING:
      return self.string(raw)
    if kind != ARRAY:
      raise VisRegionError(self.where, f"expected a GGUF value type, got {kind}")
    element, count = self.read("I"), self.read("Q")
    if element in _SCALARS and not keep:
      self.f.seek(count * struct.calcsize("<" + _SCALARS[element]), 1)
      return None
    if element in _SCALARS:  # one read for the whole array
      fmt = _SCALARS[element]
      data = self.f.read(count * struct.calcsize("<" + fmt))
      if len(data) != count * struct.calcsize("<" + fmt):
        raise VisRegionError(self.where, "expected a complete GGUF header (the file ends early)")
      return list(struct.unpack(f"<{count}{fmt}", data))
    values = [self.value(element, keep, raw) for _ in range(count)]
    return values if keep else None


def _walk(path: str):
  """Yields (key, value type, cursor) for each key/value pair; the caller reads or skips the value."""
  with open(path, "rb") as f:
    cursor = _Cursor(f, path)
    if f.read(4) != b"GGUF":
      raise VisRegionError(path, "expected a GGUF file (magic 'GGUF')")
    version = cursor.read("I")
    if version < 2:
      raise VisRegionError(path, f"expected GGUF version 2 or later, got {version}")
    cursor.read("Q")  # tensor count
    for _ in range(cursor.read("Q")):
      key = cursor.string()
      yield key, cursor.read("I"), cursor


def read_metadata(path: str, keys) -> dict:
  """{key: value} for those of `keys` the header holds (arrays of wanted keys included)."""
  wanted, found = set(keys), {}
  for key, kind, cursor in _walk(path):
    value = cursor.value(kind, key in wanted)
    if key in wanted:
      found[key] = value
      if len(found) == len(wanted):
        break
  return found


def read_fields(path: str, prefix: str) -> list:
  """[(key, value type, element type or None, value)] of the keys starting with `prefix`,
  in file order, strings as raw bytes (a token need not be valid UTF-8): what a writer
  needs to copy them unchanged."""
  fields = []
  for key, kind, cursor in _walk(path):
    if not key.startswith(prefix):
      cursor.value(kind, keep=False)
      continue
    element = None
    if kind == ARRAY:
      position = cursor.f.tell()
      element = cursor.read("I")
      cursor.f.seek(position)
    fields.append((key, kind, element, cursor.value(kind, keep=True, raw=True)))
  return fields


def block_count(path: str) -> int:
  """Decoder layers of a GGUF model (`<architecture>.block_count`)."""
  arch = read_metadata(path, ["general.architecture"]).get("general.architecture")
  count = read_metadata(path, [f"{arch}.block_count"]).get(f"{arch}.block_count")
  if not isinstance(count, int) or count < 1:
    raise VisRegionError(f"{path}: {arch}.block_count", f"expected a positive layer count, got {count!r}")
  return count
