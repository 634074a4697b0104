"""Publishing a directory built beside its destination, for the demo's cached inputs
(synthetic data, pretrained tower): readers and concurrent writers see the old result
or the new one, never half of either, and nothing that is not ours is overwritten."""

import os
import shutil
import tempfile
from typing import Callable


def install_directory(tmp: str, dest: str, *, holds_older: Callable[[str], bool],
                      holds_same: Callable[[str], bool]) -> None:
  """Moves the finished `tmp` to `dest`.

  `holds_older(dest)` is True when `dest` holds an earlier result to replace, False
  when it is missing or empty, and raises when it holds anything else. When the final
  rename fails, `holds_same(dest)` says whether another process installed the same
  result first (then that one is kept); otherwise the error propagates.
  """
  if holds_older(dest):
    old = tempfile.mkdtemp(dir=os.path.dirname(dest), prefix=f".{os.path.basename(dest)}.old-")
    os.replace(dest, os.path.join(old, "previous"))
    os.replace(tmp, dest)
    shutil.rmtree(old)
    return
  if os.path.isdir(dest):
    os.rmdir(dest)
  try:
    os.replace(tmp, dest)
  except OSError:
    if not holds_same(dest):
      raise
