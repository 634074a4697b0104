"""visregion_jax/bootstrap.py: the intervals the region study reports."""

import math

import numpy as np
import pytest

from visregion_jax import bootstrap


def test_accuracy_and_perplexity_statistics():
  assert bootstrap.accuracy(np.array([[1, 0, 1, 1], [0, 0, 1, 1]])) == 0.625
  losses = np.array([[[2.0, 1], [4.0, 3]], [[0.0, 0], [6.0, 4]]])  # [seeds, samples, (sum, tokens)]
  assert bootstrap.perplexity(losses) == pytest.approx(math.exp(12.0 / 8))


def test_interval_covers_the_mean_and_shrinks_with_more_questions():
  rng = np.random.default_rng(0)
  small = rng.random((3, 64)) < 0.7
  large = rng.random((3, 1024)) < 0.7
  a, b = bootstrap.estimate(small, bootstrap.accuracy), bootstrap.estimate(large, bootstrap.accuracy)
  assert a["low"] <= a["mean"] <= a["high"] and b["low"] <= b["mean"] <= b["high"]
  assert b["high"] - b["low"] < a["high"] - a["low"]
  # Questions alone: a Bernoulli(0.7) mean of 64 questions x 3 seeds, 1.96 * 2 * sqrt(.21 / 192) = 0.13
  # wide; resampling the seeds too adds their spread (which itself carries question noise), so the
  # two-level interval is wider, never narrower.
  assert 0.13 < a["high"] - a["low"] < 0.3


def test_same_seed_same_interval_and_a_constant_has_none():
  data = np.random.default_rng(1).random((3, 50)) < 0.5
  assert bootstrap.estimate(data, bootstrap.accuracy) == bootstrap.estimate(data, bootstrap.accuracy)
  ones = bootstrap.estimate(np.ones((2, 10)), bootstrap.accuracy)
  assert ones == {"mean": 1.0, "low": 1.0, "high": 1.0}


def test_paired_difference_sees_a_small_consistent_gain_that_unpaired_noise_hides():
  """Arm a answers 5 more of 200 questions in every seed: the paired interval excludes 0
  although each arm's own interval overlaps the other's."""
  rng = np.random.default_rng(2)
  b = rng.random((3, 200)) < 0.6
  a = b.copy()
  for s in range(3):
    a[s, np.flatnonzero(~b[s])[:5]] = True
  diff = bootstrap.difference(a, b, bootstrap.accuracy)
  assert diff["mean"] == pytest.approx(15 / 600)
  assert diff["low"] > 0 and bootstrap.verdict(diff) == "higher"
  ea, eb = bootstrap.estimate(a, bootstrap.accuracy), bootstrap.estimate(b, bootstrap.accuracy)
  assert ea["low"] < eb["high"]
  assert bootstrap.verdict(bootstrap.difference(b, b, bootstrap.accuracy)) == "not separable"
  assert bootstrap.verdict(bootstrap.difference(b, a, bootstrap.accuracy)) == "lower"


def test_unpaired_shapes_are_refused():
  with pytest.raises(ValueError, match="same"):
    bootstrap.difference(np.ones((3, 10)), np.ones((3, 11)), bootstrap.accuracy)
