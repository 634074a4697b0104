"""The grain input pipeline: source -> shuffled indices -> samples in workers -> batches.

Global batch s is positions [s*B, (s+1)*B) of one shuffled index stream (shuffle by
seed, reshuffled each epoch); process p of P takes its contiguous rows [p*B/P,
(p+1)*B/P). The samples of a step are therefore a function of the seed and the step
alone, not of the process count or the mesh: a run resumes from its step on any
number of processes (`make_batches(start_step=...)`, nothing else to restore). A bad
sample comes out of the workers as `{"skip": reason}`, is counted in the main process
(exact however many workers run) and becomes an empty row (one padding token, nothing
supervised) so it changes no other row and no loss. Loading, tokenization and image
preprocessing run in grain worker processes (numpy and PIL only: JAX stays in the main
process). Batches have fixed shapes (padding to `max_length`, or to the smallest
fitting bucket in a single-process job) to bound recompiles.
"""

import dataclasses
import io
import sys
from typing import Optional

import grain
import numpy as np
from absl import flags
from PIL import Image

from visregion_jax.data import image_processing, packing, skip
from visregion_jax.data.tokenize import IGNORE_INDEX, TokenizeConfig, tokenize_conversation
from visregion_jax.errors import VisRegionError


@dataclasses.dataclass(frozen=True)
class DataConfig:
  template: str
  max_length: int
  global_batch_size: int
  image_token_id: int
  num_image_tokens: int
  image: image_processing.ImageProcessorConfig
  pad_token_id: int = 0
  pad_to_square: bool = True
  max_images_per_sample: int = 1
  buckets: tuple = ()              # sequence lengths to pad to; () pads to max_length
  packing: bool = False             # whole samples share rows of max_length (packing.py)
  max_images_per_row: int = 1       # image slots of a packed row
  pack_window: int = 256            # samples packed together (first-fit, in stream order)
  num_workers: int = 0              # grain worker processes (0: threads in this process)
  read_threads: int = 4
  prefetch_buffer: int = 16
  seed: int = 0
  num_epochs: Optional[int] = None  # None repeats forever

  def tokenize_config(self) -> TokenizeConfig:
    return TokenizeConfig(template=self.template, max_length=self.max_length,
                          image_token_id=self.image_token_id, num_image_tokens=self.num_image_tokens)


class SampleLoader:
  """index -> training sample, or `{"skip": reason}`; picklable for worker processes."""

  def __init__(self, source, tokenizer, config: DataConfig):
    self.source, self.tokenizer, self.config = source, tokenizer, config

  def decode_images(self, encoded: list, index: int) -> np.ndarray:
    images = []
    for data in encoded:
      try:
        with Image.open(io.BytesIO(data)) as image:
          image.load()
          images.append(image.copy())
      except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise skip.SkipSample(skip.CORRUPT_IMAGE, f"sample {index}: {e}") from None
    if not images:
      size = self.config.image.crop_size or self.config.image.size
      return np.zeros((0, size, size, 3), np.float32)
    try:
      return image_processing.preprocess(images, self.config.image, self.config.pad_to_square)
    except VisRegionError as e:
      raise skip.SkipSample(skip.CORRUPT_IMAGE, f"sample {index}: {e}") from None

  def tokenized(self, index: int) -> dict:
    """The sample's tokens and its images' encoded bytes (not decoded), or a skip."""
    index = int(index)
    try:
      record = self.source[index]
      if len(record["images"]) > self.config.max_images_per_sample:
        raise skip.SkipSample(skip.WRONG_TYPES, f"sample {index}: more than "
                              f"{self.config.max_images_per_sample} images")
      tokens = tokenize_conversation(record["conversations"], len(record["images"]), self.tokenizer,
                                     self.config.tokenize_config())
    except skip.SkipSample as e:
      return {"skip": e.reason, "index": index}
    return {"index": index, "input_ids": tokens.input_ids, "labels": tokens.labels,
            "images": record["images"], "truncated": tokens.truncated}

  def pixels(self, record: dict) -> np.ndarray:
    return self.decode_images(record["images"], record["index"])

  def __call__(self, index: int) -> dict:
    record = self.tokenized(index)
    if "skip" in record:
      return record
    try:
      pixels = self.pixels(record)
    except skip.SkipSample as e:
      return {"skip": e.reason, "index": record["index"]}
    return {"index": record["index"], "input_ids": record["input_ids"], "labels": record["labels"],
            "pixel_values": pixels, "truncated": record["truncated"]}


class CountSkips:
  """Main-process map: counts skip reasons (and truncations); a skipped sample becomes an
  empty row (index -1) so every step keeps its global batch. As many skips in a row as
  the source has samples means no sample is usable: an error, not an endless loop."""

  def __init__(self, counter: skip.SkipCounter, config: DataConfig, num_samples: int):
    self.counter, self.config, self.num_samples = counter, config, num_samples
    self.in_a_row = 0

  def __call__(self, record: dict) -> dict:
    if "skip" in record:
      self.counter.add(record["skip"])
      self.in_a_row += 1
      if self.in_a_row >= self.num_samples:
        raise VisRegionError("data", f"expected at least one usable sample: no usable sample in "
                             f"{self.in_a_row} in a row (skipped: {self.counter.counts()})")
      size = self.config.image.crop_size or self.config.image.size
      return {"index": -1, "input_ids": np.array([self.config.pad_token_id], np.int32),
              "labels": np.array([IGNORE_INDEX], np.int32), "pixel_values": np.zeros((0, size, size, 3), np.float32),
              "truncated": False}
    self.in_a_row = 0
    if record["truncated"]:
      self.counter.add(skip.TRUNCATED)
    return record


class StreamRows:
  """Local sample position i -> the source index it reads: row i % L of this process's
  share of global batch i // L (rows [p*L, (p+1)*L) of B)."""

  def __init__(self, stream, global_batch: int, local_batch: int, process_index: int):
    self.stream, self.global_batch, self.local_batch = stream, global_batch, local_batch
    self.offset = process_index * local_batch

  def __call__(self, i: int) -> int:
    step, row = divmod(int(i), self.local_batch)
    return int(self.stream[step * self.global_batch + self.offset + row])


def padded_length(longest: int, config: DataConfig) -> int:
  for bucket in sorted(config.buckets):
    if longest <= bucket:
      return bucket
  return config.max_length


def collate(records: list, config: DataConfig) -> dict:
  """Fixed-shape numpy batch. Row i's images fill its own `max_images_per_sample` slots
  of the image axis (the rest are padding, `image_mask` False), so any split of the
  batch axis (micro-batches, processes) keeps each row with its images."""
  length = padded_length(max(len(r["input_ids"]) for r in records), config)
  b = len(records)
  input_ids = np.full((b, length), config.pad_token_id, np.int32)
  labels = np.full((b, length), IGNORE_INDEX, np.int32)
  attention_mask = np.zeros((b, length), np.int32)
  for i, r in enumerate(records):
    n = len(r["input_ids"])
    input_ids[i, :n], labels[i, :n], attention_mask[i, :n] = r["input_ids"], r["labels"], 1
  slots = config.max_images_per_sample
  pixel_values = np.zeros((b * slots, *records[0]["pixel_values"].shape[1:]), np.float32)
  image_mask = np.zeros(b * slots, bool)
  for i, r in enumerate(records):
    n = len(r["pixel_values"])
    pixel_values[i * slots:i * slots + n] = r["pixel_values"]
    image_mask[i * slots:i * slots + n] = True
  return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
          "pixel_values": pixel_values, "image_mask": image_mask,
          "index": np.array([r["index"] for r in records], np.int64)}


def local_batch_size(config: DataConfig, process_count: int) -> int:
  if config.global_batch_size % process_count:
    raise VisRegionError("train.batch_size", f"expected a multiple of the process count "
                         f"{process_count}, got {config.global_batch_size}")
  return config.global_batch_size // process_count


def make_batches(source, tokenizer, config: DataConfig, *, counter: skip.SkipCounter,
                 process_index: int = 0, process_count: int = 1, start_step: int = 0,
                 pack_state: Optional[packing.PackState] = None):
  """This process's batches (global batch / process count rows each) from global step
  `start_step` on (packed: from `pack_state`); with `num_epochs` set, as many full
  global batches as the epochs hold. Each batch carries `skip_counts`, the counter's
  counts once its samples were read, so a consumer running ahead (prefetch) can still
  report the counts of what it trained on."""
  if len(source) == 0:
    raise VisRegionError("data", "expected at least one sample in the source")
  local = local_batch_size(config, process_count)
  if config.packing:
    return packing.packed_batches(source, SampleLoader(source, tokenizer, config), config, counter=counter,
                                  process_index=process_index, local_batch=local,
                                  state=pack_state or packing.PackState())
  if process_count > 1:  # every process must pad its rows to the same length
    config = dataclasses.replace(config, buckets=())
  stream = grain.MapDataset.range(len(source)).shuffle(seed=config.seed).repeat(config.num_epochs)
  steps = len(stream) // config.global_batch_size if config.num_epochs else sys.maxsize // config.global_batch_size
  positions = grain.MapDataset.range(start_step * local, steps * local)
  read = grain.ReadOptions(num_threads=config.read_threads,
                           prefetch_buffer_size=max(config.prefetch_buffer, config.read_threads))
  samples = positions.map(StreamRows(stream, config.global_batch_size, local, process_index)).map(
      SampleLoader(source, tokenizer, config)).to_iter_dataset(read)
  if config.num_workers > 0:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; library callers never parse them
      flags.FLAGS.mark_as_parsed()
    samples = samples.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers))
  return samples.map(CountSkips(counter, config, len(source))).batch(
      local, drop_remainder=True, batch_fn=lambda records: {**collate(records, config),
                                                            "skip_counts": counter.counts()})
