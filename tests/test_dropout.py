"""models/dropout.py: 16-bit dropout keeps nnx.Dropout's contract and its statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from visregion_jax.models.dropout import Dropout, dropout_input

SHAPE = (512, 1030)   # 527,360 draws; an even width, so draws j and j + 515 share a word


def _dropped(rate: float, seed: int = 0, shape=SHAPE) -> np.ndarray:
  return np.asarray(dropout_input(jax.random.key(seed), rate, jnp.ones(shape, jnp.float32)) == 0)


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.5])
def test_drop_rate_and_expectation(rate):
  n = np.prod(SHAPE)
  p = round(rate * 65536) / 65536
  x = jnp.asarray(np.random.RandomState(0).uniform(1, 2, SHAPE).astype(np.float32))
  y = np.asarray(dropout_input(jax.random.key(1), rate, x))
  dropped = y == 0
  assert abs(dropped.mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
  np.testing.assert_allclose(y[~dropped], np.asarray(x)[~dropped] / (1 - p), rtol=1e-6)
  assert abs(y.mean() / np.asarray(x).mean() - 1) < 5 * np.sqrt(p / (1 - p) / n) * 1.2


def test_the_two_halves_of_a_word_are_independent():
  """Both halves of every word used: a copied half would drop both elements together."""
  p = round(0.1 * 65536) / 65536
  dropped = _dropped(0.1)
  half = SHAPE[1] // 2
  both = (dropped[:, :half] & dropped[:, half:]).mean()
  n = dropped[:, :half].size
  assert abs(both - p * p) < 5 * np.sqrt(p * p / n)


def test_odd_width_and_edge_rates():
  x = jnp.ones((3, 7), jnp.float32)
  assert dropout_input(jax.random.key(0), 0.3, x).shape == (3, 7)
  np.testing.assert_array_equal(dropout_input(jax.random.key(0), 0.0, x), x)
  np.testing.assert_array_equal(dropout_input(jax.random.key(0), 1.0, x), jnp.zeros_like(x))


def test_keys_decide_the_mask():
  np.testing.assert_array_equal(_dropped(0.2, seed=3), _dropped(0.2, seed=3))
  assert (_dropped(0.2, seed=3) != _dropped(0.2, seed=4)).any()


def test_module_is_nnx_dropout_in_state_and_modes():
  """Same state tree as nnx.Dropout (checkpoints, exact resume), off in eval mode, and
  each call advances the stream."""
  ours, theirs = Dropout(0.2, rngs=nnx.Rngs(dropout=5)), nnx.Dropout(0.2, rngs=nnx.Rngs(dropout=5))
  assert jax.tree.structure(nnx.state(ours)) == jax.tree.structure(nnx.state(theirs))
  x = jnp.ones((64, 64), jnp.float32)
  first, second = ours(x), ours(x)
  assert (first == 0).any() and (np.asarray(first) != np.asarray(second)).any()
  ours.eval()
  np.testing.assert_array_equal(ours(x), x)
