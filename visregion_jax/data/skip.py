"""Bad data samples are skipped and counted by reason, never silently dropped.

A sample-level problem raises `SkipSample(reason)`; the pipeline catches it, counts
the reason in `SkipCounter`, logs the counts and moves on. File-level problems (a
malformed JSON file) are `VisRegionError`s instead: they stop the run.
"""

import collections
import threading

# The reasons, so counts from different processes and runs line up.
MISSING_IMAGE = "missing_image"
NOT_A_FILE = "image_not_a_regular_file"  # a directory, FIFO or device: never read (it could block)
CORRUPT_IMAGE = "corrupt_image"
PATH_OUTSIDE_ROOT = "path_outside_root"
NO_ASSISTANT_TURN = "no_assistant_turn"
IMAGE_TAG_WITHOUT_IMAGE = "image_tag_without_image"
IMAGE_WITHOUT_IMAGE_TAG = "image_without_image_tag"
EMPTY_CONVERSATION = "empty_conversation"
BAD_TEXT = "bad_text"            # not UTF-8 / undecodable
WRONG_TYPES = "wrong_types"      # fields of the wrong JSON type or unknown roles
TOO_LONG = "too_long"            # image tokens would be cut by max_length
ALL_LABELS_MASKED = "all_labels_masked"
TRUNCATED = "truncated"          # counted, but the sample is kept


class SkipSample(Exception):
  """This sample cannot be trained on; `reason` is one of the constants above."""

  def __init__(self, reason: str, detail: str = ""):
    self.reason = reason
    self.detail = detail
    super().__init__(f"{reason}: {detail}" if detail else reason)


class SkipCounter:
  """Thread-safe counts of skipped (and truncated) samples by reason."""

  def __init__(self):
    self._counts = collections.Counter()
    self._lock = threading.Lock()

  def add(self, reason: str, n: int = 1) -> None:
    with self._lock:
      self._counts[reason] += n

  def counts(self) -> dict:
    with self._lock:
      return dict(self._counts)

  def total_skipped(self) -> int:
    with self._lock:
      return sum(n for reason, n in self._counts.items() if reason != TRUNCATED)
