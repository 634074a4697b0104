"""SIGTERM and SIGINT stop a run at a step boundary, with a checkpoint, on every process.

A TPU maintenance event, a preemptible VM or a cluster scheduler sends SIGTERM; a user
presses Ctrl-C. The handler only records the signal; the loop asks `requested()` after
each step, and on a multi-process job the processes agree on it through a tiny
all-gather (a signal that reached one process stops all of them at the same step), so
every process saves the same checkpoint and leaves. A second Ctrl-C aborts at once.
"""

import os
import signal
import sys
import threading
from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
  """Context manager: while inside, SIGTERM / SIGINT request a stop instead of killing."""

  def __init__(self):
    self.received: Optional[int] = None
    self._previous = {}

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is threading.main_thread():  # signal handlers live there only
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del frame
    if self.received is not None and signum == signal.SIGINT:
      print("interrupted again: aborting without a checkpoint", file=sys.stderr, flush=True)
      os._exit(128 + signum)
    self.received = signum
    print(f"received {signal.Signals(signum).name}: stopping after this step with a checkpoint "
          "(Ctrl-C again aborts)", file=sys.stderr, flush=True)

  def requested(self) -> Optional[int]:
    """The signal every process stops for, or None. Collective on multi-process jobs:
    every process must call it at the same step."""
    local = self.received or 0
    if jax.process_count() > 1:
      local = int(np.max(multihost_utils.process_allgather(np.int32(local))))
    return local or None
