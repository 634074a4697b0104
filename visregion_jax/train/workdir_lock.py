"""One run per workdir: `WORKDIR/run.lock` names the host and process that holds it.

Two runs on one workdir would interleave their metrics and checkpoints, so a second run
is refused with an `error:` line. A lock left behind by a process that died (same host,
no such process any more) is taken over. On a multi-process job process 0 holds it.
"""

import json
import os
import socket

from visregion_jax.errors import VisRegionError

LOCK = "run.lock"


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _holder(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      d = json.load(f)
    return str(d["host"]), int(d["pid"])
  except (OSError, ValueError, KeyError, TypeError):
    return None


class WorkdirLock:
  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK)
    self.held = False

  def acquire(self) -> "WorkdirLock":
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = _holder(self.path)
        if holder is not None and (holder[0] != me["host"] or _alive(holder[1])):
          raise VisRegionError(self.path, f"expected no other run on this workdir; it is in use by process "
                               f"{holder[1]} on {holder[0]} (remove the file if that run is gone)") from None
        os.remove(self.path)  # stale: its process is gone (or the file is unreadable)
        continue
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(me, f)
      self.held = True
      return self
    raise VisRegionError(self.path, "expected to take over a stale lock; another run took it first")

  def release(self) -> None:
    if self.held and _holder(self.path) == (socket.gethostname(), os.getpid()):
      os.remove(self.path)
    self.held = False
