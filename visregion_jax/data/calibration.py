"""Calibration batches: the first usable samples of a source in a seeded order.

Pruning scores its layers on them and the `scored` region strategy probes the model
with them: the first `num_samples` samples that the training pipeline's loader does
not skip, in the order of numpy.random.default_rng(seed).permutation, collated as
training collates them, a batch at a time so memory does not grow with their number.
"""

import numpy as np

from visregion_jax.data import pipeline


def calibration_batches(source, tokenizer, data_config, num_samples: int, batch_size: int, seed: int):
  """Collated batches of the first `num_samples` usable samples in a seeded order."""
  loader = pipeline.SampleLoader(source, tokenizer, data_config)
  records, used = [], 0
  for index in np.random.default_rng(seed).permutation(len(source)):
    if used == num_samples:
      break
    record = loader(index)
    if "skip" in record:
      continue
    records.append(record)
    used += 1
    if len(records) == batch_size:
      yield pipeline.collate(records, data_config)
      records = []
  if records:
    yield pipeline.collate(records, data_config)
