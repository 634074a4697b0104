"""Outputs published whole: a directory is either the previous complete output or the new
complete one, never a mix or a partial write.

The new output is written into a hidden sibling (`.NAME.partial-<pid>`, same
filesystem), and only when it is complete does it take the destination's place: the
old output is renamed aside, the new one renamed in, the old one deleted. A failure
while writing (a full disk, a file-size limit, a crash) leaves the previous output
untouched and the partial sibling removed; files beside the destination are never
touched, and nothing of the old output survives inside the new one.
"""

import contextlib
import os
import shutil

from visregion_jax.errors import VisRegionError


def _sibling(dest: str, kind: str) -> str:
  parent, name = os.path.split(dest)
  return os.path.join(parent, f".{name}.{kind}-{os.getpid()}")


@contextlib.contextmanager
def published_directory(dest: str, *, overwrite: bool = True):
  """Yields the directory to write into; on success it becomes `dest` at once."""
  dest = os.path.abspath(dest)
  if os.path.exists(dest) and not os.path.isdir(dest):
    raise VisRegionError(dest, "expected a directory, found a file")
  if not overwrite and os.path.isdir(dest) and os.listdir(dest):
    raise VisRegionError(dest, "expected a new or empty directory (or pass --overwrite)")
  os.makedirs(os.path.dirname(dest), exist_ok=True)
  partial = _sibling(dest, "partial")
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  try:
    yield partial
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise
  replace_directory(partial, dest)


def replace_directory(new: str, dest: str) -> None:
  """Moves the complete directory `new` to `dest`, replacing what was there."""
  old = _sibling(dest, "old")
  shutil.rmtree(old, ignore_errors=True)
  if os.path.isdir(dest):
    os.rename(dest, old)
  os.rename(new, dest)
  shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def published_file(dest: str):
  """Yields a hidden path beside `dest` to write one file into; on success it replaces
  `dest` in one rename, on failure it is removed and `dest` stays as it was."""
  dest = os.path.abspath(dest)
  if os.path.isdir(dest):
    raise VisRegionError(dest, "expected a file path, found a directory")
  partial = _sibling(dest, "partial")
  try:
    yield partial
  except BaseException:
    if os.path.exists(partial):
      os.remove(partial)
    raise
  os.replace(partial, dest)


def write_file_atomically(path: str, text: str) -> None:
  """A small text file (a report, a JSON) written beside its place and renamed in."""
  with published_file(path) as partial, open(partial, "w", encoding="utf-8") as f:
    f.write(text)
