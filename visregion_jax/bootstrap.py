"""Bootstrap confidence intervals for studies that repeat a measurement over seeds and
questions (tools/region_study.py).

A study's number for one arm comes from S independently seeded runs, each answering
the same Q held-out questions. Both are samples: another seed would train a different
model, other questions would test it differently. The interval resamples both at
once (a two-level bootstrap: S seeds with replacement, then Q questions with
replacement, the same questions for every seed, since all runs answered the same
ones) and reports the 2.5th and 97.5th percentiles of the statistic. Comparisons of
two arms resample both with the same indices (paired: same seeds, same questions),
which is what lets a small difference between arms be told from noise or not.

The interval leans wide: the spread of the seeds it resamples already carries their
questions' noise, which the question level then adds again. With few seeds (3) the
seed level sees only the spread of those few, so the study says how many it had.
"""

import math

import numpy as np

REPLICATES = 2000
LEVEL = 0.95


def accuracy(hits: np.ndarray) -> float:
  """Mean of a [seeds, questions] matrix of 1 / 0."""
  return float(np.mean(hits))


def perplexity(losses: np.ndarray) -> float:
  """exp(total loss / total tokens) of a [seeds, samples, 2] array of [loss sum, tokens]."""
  return math.exp(min(float(np.sum(losses[..., 0]) / max(np.sum(losses[..., 1]), 1)), 50.0))


def _resampled(arrays: list, rng, replicates: int):
  seeds, items = arrays[0].shape[:2]
  for a in arrays:
    if a.shape[:2] != (seeds, items):
      raise ValueError(f"paired arrays need the same [seeds, items], got {a.shape[:2]} and {(seeds, items)}")
  for _ in range(replicates):
    s, q = rng.integers(0, seeds, seeds), rng.integers(0, items, items)
    yield [a[s][:, q] for a in arrays]


def interval(values, level: float = LEVEL) -> tuple:
  lo, hi = np.percentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
  return float(lo), float(hi)


def estimate(data, statistic, *, replicates: int = REPLICATES, seed: int = 0) -> dict:
  """{"mean", "low", "high"}: `statistic(data)` and its bootstrap interval."""
  data = np.asarray(data, np.float64)
  rng = np.random.default_rng(seed)
  values = [statistic(a) for (a,) in _resampled([data], rng, replicates)]
  low, high = interval(values)
  return {"mean": statistic(data), "low": low, "high": high}


def difference(a, b, statistic, *, replicates: int = REPLICATES, seed: int = 0) -> dict:
  """{"mean", "low", "high"} of statistic(a) - statistic(b), paired over seeds and items."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  rng = np.random.default_rng(seed)
  values = [statistic(x) - statistic(y) for x, y in _resampled([a, b], rng, replicates)]
  low, high = interval(values)
  return {"mean": statistic(a) - statistic(b), "low": low, "high": high}


def verdict(diff: dict) -> str:
  """What an interval of a difference says: a sign, or that it cannot tell."""
  if diff["low"] > 0:
    return "higher"
  if diff["high"] < 0:
    return "lower"
  return "not separable"
