"""Packing: whole tokenized samples, with their images, share rows of `max_length`.

Ragged instruction data (short VQA turns beside long conversations) padded row by row
computes mostly on padding; packed, a row holds as many whole samples as fit. The
shuffled index stream (the same as unpacked training: seed, epochs) is cut into windows
of `pack_window` samples; each window is tokenized and packed first-fit, in stream
order: a sample goes into the first row of its window that has room for its tokens and
its images (`max_images_per_row` slots), else it opens a row. A sample is never split;
one longer than `max_length` was already truncated (and counted) by tokenization.

Rows are global: every process packs every window the same way (tokenizing, cheap,
is repeated per process; images are decoded only for the process's own rows). Global
batch s is the next `global_batch_size` rows; process p takes rows [p*L, (p+1)*L) of
it, as unpacked. Where the stream stands is a small state, (window, row): the first row
not yet trained on. It is saved with each checkpoint and a run resumes from it, on any
number of processes.

A packed row carries `segment_ids` (1..n per sample, 0 = padding) and the labels of
each sample with its first token unsupervised: the previous sample's last position
must not learn to predict it (alone, a sample's first token is never a target either).
"""

import dataclasses
import sys
from concurrent import futures
from typing import Iterator

import grain
import numpy as np

from visregion_jax.data import skip
from visregion_jax.data.tokenize import IGNORE_INDEX
from visregion_jax.errors import VisRegionError


@dataclasses.dataclass(frozen=True)
class PackState:
  """The first row not yet trained on: row `row` of window `window`."""

  window: int = 0
  row: int = 0

  def to_json(self) -> dict:
    return {"window": self.window, "row": self.row}

  @classmethod
  def from_json(cls, d) -> "PackState":
    if not (isinstance(d, dict) and all(isinstance(d.get(k), int) and d[k] >= 0 for k in ("window", "row"))):
      raise VisRegionError("checkpoint meta: data_state", f"expected {{'window': n, 'row': n}}, got {d!r}")
    return cls(window=d["window"], row=d["row"])


def first_fit(lengths, image_counts, max_length: int, max_images: int) -> list:
  """Rows (lists of sample positions, in stream order) of a first-fit packing."""
  rows, room, slots = [], [], []
  for i, (n, k) in enumerate(zip(lengths, image_counts)):
    for r, (tokens_left, images_left) in enumerate(zip(room, slots)):
      if n <= tokens_left and k <= images_left:
        rows[r].append(i)
        room[r] -= n
        slots[r] -= k
        break
    else:
      rows.append([i])
      room.append(max_length - n)
      slots.append(max_images - k)
  return rows


class Packer:
  """Global packed rows from a PackState on, window by window.

  `loader` is the pipeline's SampleLoader: `tokenized(index)` gives a sample without
  pixels (or a skip), `pixels(record)` decodes its images later, for own rows only.
  """

  def __init__(self, source, loader, config, counter: skip.SkipCounter):
    self.loader, self.config, self.counter = loader, config, counter
    self.stream = grain.MapDataset.range(len(source)).shuffle(seed=config.seed).repeat(config.num_epochs)
    self.stream_length = len(self.stream) if config.num_epochs else sys.maxsize
    self.num_samples = len(source)
    self.unusable_in_a_row = 0

  def window(self, w: int, count_skips: bool) -> tuple:
    """(records, rows) of window w; skips and truncations counted when `count_skips`."""
    start = w * self.config.pack_window
    end = min(start + self.config.pack_window, self.stream_length)
    records = []
    for position in range(start, end):
      record = self.loader.tokenized(int(self.stream[position]))
      if "skip" in record:
        self.unusable_in_a_row += 1
        if count_skips:
          self.counter.add(record["skip"])
        if self.unusable_in_a_row >= self.num_samples:
          raise VisRegionError("data", f"expected at least one usable sample: no usable sample in "
                               f"{self.unusable_in_a_row} in a row (skipped: {self.counter.counts()})")
        continue
      self.unusable_in_a_row = 0
      if count_skips and record["truncated"]:
        self.counter.add(skip.TRUNCATED)
      records.append(record)
    rows = first_fit([len(r["input_ids"]) for r in records], [len(r["images"]) for r in records],
                     self.config.max_length, self.config.max_images_per_row)
    return records, rows

  def rows(self, state: PackState) -> Iterator[tuple]:
    """(samples of the row, the state after it) for every global row from `state` on."""
    w, first = state.window, state.row
    while w * self.config.pack_window < self.stream_length:
      records, rows = self.window(w, count_skips=first == 0)
      for r in range(first, len(rows)):
        after = PackState(w, r + 1) if r + 1 < len(rows) else PackState(w + 1, 0)
        yield [records[i] for i in rows[r]], after
      w, first = w + 1, 0


def packed_batch(rows: list, config, loader, pool: futures.Executor) -> dict:
  """This process's packed rows as fixed-shape arrays (images decoded in `pool`)."""
  b, length, slots = len(rows), config.max_length, config.max_images_per_row
  size = config.image.crop_size or config.image.size
  input_ids = np.full((b, length), config.pad_token_id, np.int32)
  labels = np.full((b, length), IGNORE_INDEX, np.int32)
  segment_ids = np.zeros((b, length), np.int32)
  pixel_values = np.zeros((b * slots, size, size, 3), np.float32)
  image_mask = np.zeros(b * slots, bool)
  decoded = list(pool.map(loader.pixels, [record for row in rows for record in row]))
  k = 0
  for i, row in enumerate(rows):
    start, slot = 0, i * slots
    for segment, record in enumerate(row, start=1):
      n = len(record["input_ids"])
      input_ids[i, start:start + n] = record["input_ids"]
      labels[i, start:start + n] = record["labels"]
      labels[i, start] = IGNORE_INDEX
      segment_ids[i, start:start + n] = segment
      pixels = decoded[k]
      k += 1
      pixel_values[slot:slot + len(pixels)] = pixels
      image_mask[slot:slot + len(pixels)] = True
      start, slot = start + n, slot + len(pixels)
  return {"input_ids": input_ids, "labels": labels, "attention_mask": (segment_ids > 0).astype(np.int32),
          "segment_ids": segment_ids, "pixel_values": pixel_values, "image_mask": image_mask,
          "index": np.array([row[0]["index"] for row in rows], np.int64)}


def packed_batches(source, loader, config, *, counter: skip.SkipCounter, process_index: int,
                   local_batch: int, state: PackState) -> Iterator[dict]:
  """This process's packed batches from `state` on; each carries `data_state`, the
  PackState to resume from once it is trained on, and `skip_counts`, the pipeline's
  counts so far."""
  packer = Packer(source, loader, config, counter)
  rows = packer.rows(state)
  offset = process_index * local_batch
  with futures.ThreadPoolExecutor(max(1, config.read_threads)) as pool:
    while True:
      batch = [next(rows, None) for _ in range(config.global_batch_size)]
      if batch[-1] is None:
        return  # the epochs end: the last partial global batch is dropped, as unpacked
      mine = [samples for samples, _ in batch[offset:offset + local_batch]]
      out = packed_batch(mine, config, loader, pool)
      out.update(data_state=batch[-1][1], skip_counts=counter.counts())
      yield out
