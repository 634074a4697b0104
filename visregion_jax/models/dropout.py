"""Dropout that draws 16 random bits per element instead of 32.

`nnx.Dropout` draws a float32 uniform (32 threefry bits) per element. LoRA's dropout
masks the input of every adapted linear, so one step of the r128 region on SmolLM2
draws ~41M of them, and threefry was ~7% of the step on CPU (BUILD.md, "What the
fixes bought"). Here each 32-bit word gives two 16-bit draws and an element is dropped
when its draw is below round(rate * 2^16): half the random bits, on every backend,
since the cost is the generator's arithmetic. The rate is thereby rounded to a
multiple of 2^-16 (0.05 -> 0.0500031) and the kept elements are scaled by the inverse
of that exact keep probability, so the output's expectation is still the input.

A subclass, so the module's state (rate, `deterministic`, the RNG stream and its
counter) and with it checkpoints, `model.eval()` and exact resume stay nnx.Dropout's.
"""

import jax
import jax.numpy as jnp
from flax import nnx

_LEVELS = 1 << 16


def dropout_input(key: jax.Array, rate: float, x: jnp.ndarray) -> jnp.ndarray:
  """x with each element zeroed with probability round(rate * 2^16) / 2^16 and the
  rest scaled by the inverse of the keep probability."""
  threshold = round(rate * _LEVELS)
  if threshold == 0:
    return x
  if threshold >= _LEVELS:
    return jnp.zeros_like(x)
  width = x.shape[-1]
  words = jax.random.bits(key, x.shape[:-1] + ((width + 1) // 2,), jnp.uint32)
  draws = jnp.concatenate([words & 0xFFFF, words >> 16], axis=-1)[..., :width]
  scale = jnp.asarray(_LEVELS / (_LEVELS - threshold), x.dtype)
  return jnp.where(draws >= threshold, x * scale, jnp.zeros_like(x))


class Dropout(nnx.Dropout):
  """nnx.Dropout with 16-bit draws (`dropout_input`), one mask element per input element."""

  def __init__(self, rate: float, *, rngs: nnx.Rngs):
    super().__init__(rate, rngs=rngs)

  def __call__(self, inputs):  # pylint: disable=arguments-differ
    if self.deterministic or self.rate == 0.0:
      return inputs
    return dropout_input(self.rngs(), self.rate, inputs)
