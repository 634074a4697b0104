"""Batches built and placed on the devices while the step runs.

Without it, each step waits for its batch: reading, tokenizing, packing, decoding
images and the host-to-device copy all sit between two steps. A single background
thread pulls the pipeline's batches in order and places each on the mesh, up to
`depth` ahead, so the order, and with it resume, is exactly the unprefetched one. What
the consumer needs from the host side of a batch (its rows' indices, the data state to
resume from, the skip counts so far, the host arrays for statistics) travels with it.
"""

import queue
import threading
from typing import Callable, Iterator

_END = object()
HOST_KEYS = ("index", "data_state", "skip_counts")


def split_host(local: dict) -> tuple:
  """(host-only items, arrays that go to the devices)."""
  host = {k: local[k] for k in HOST_KEYS if k in local}
  return host, {k: v for k, v in local.items() if k not in HOST_KEYS}


class Prefetcher:
  """Iterates (host items, host arrays, placed arrays) of `batches`, `depth` ahead
  (0: built and placed in the caller's thread when asked for). An error of the
  pipeline is raised in the caller at the batch it would have produced."""

  def __init__(self, batches: Iterator[dict], place: Callable[[dict], dict], depth: int):
    self._batches, self._place, self._depth = batches, place, depth
    self._stop = threading.Event()
    if depth:
      self._queue = queue.Queue(maxsize=depth)
      self._thread = threading.Thread(target=self._fill, name="visregion-prefetch", daemon=True)
      self._thread.start()

  def _next(self):
    local = next(self._batches, _END)
    if local is _END:
      return _END
    host, arrays = split_host(local)
    return host, arrays, self._place(arrays)

  def _fill(self) -> None:
    try:
      while not self._stop.is_set():
        item = self._next()
        self._put(item)
        if item is _END:
          return
    except BaseException as e:  # handed to the consumer, raised there
      self._put(e)

  def _put(self, item) -> None:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return
      except queue.Full:
        continue

  def __iter__(self):
    return self

  def __next__(self):
    item = self._next() if not self._depth else self._queue.get()
    if item is _END:
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    """Stops the background thread (it finishes the batch it is building)."""
    self._stop.set()
    if self._depth:
      self._thread.join()
