"""The XLA attention path (models/dense_attention.py) against `jax.nn.dot_product_attention`,
whose numbers it keeps while laying the heads out for plain batched matmuls and keeping
only q, k, v and the probabilities for its own backward pass."""

import jax
import jax.numpy as jnp
import pytest

from visregion_jax.models.dense_attention import dense_attention

CASES = {  # (B, T, S, H, KV, d)
    "gqa": (2, 7, 7, 8, 2, 16),
    "mha, one query over nine keys": (2, 1, 9, 4, 4, 8),
    "three groups of two": (3, 5, 5, 6, 3, 4),
}


def _inputs(b, t, s, h, kv, d, dtype):
  keys = jax.random.split(jax.random.key(1), 5)
  q = jax.random.normal(keys[0], (b, t, h, d)).astype(dtype)
  k = jax.random.normal(keys[1], (b, s, kv, d)).astype(dtype)
  v = jax.random.normal(keys[2], (b, s, kv, d)).astype(dtype)
  mask = jax.random.bernoulli(keys[3], 0.6, (b, 1, t, s))
  mask = mask.at[0, 0, 0].set(False)    # a query with no key: both average every value
  cotangent = jax.random.normal(keys[4], (b, t, h, d))
  return q, k, v, mask, cotangent


def _value_and_grads(attention, q, k, v, cotangent):
  out, pullback = jax.vjp(attention, q, k, v)
  return (out, *pullback(cotangent.astype(out.dtype)))


@pytest.mark.parametrize("masked", [True, False], ids=["mask", "no mask"])
@pytest.mark.parametrize("case", CASES)
def test_equals_jax_attention_fp32(case, masked):
  q, k, v, mask, cotangent = _inputs(*CASES[case], jnp.float32)
  mask = mask if masked else None
  ours = _value_and_grads(lambda q, k, v: dense_attention(q, k, v, mask, 0.3), q, k, v, cotangent)
  jaxs = _value_and_grads(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, scale=0.3),
                          q, k, v, cotangent)
  for name, a, b in zip(("out", "dq", "dk", "dv"), ours, jaxs):
    assert a.dtype == b.dtype and a.shape == b.shape, name
    assert float(jnp.max(jnp.abs(a - b))) <= (1e-6 if name == "out" else 1e-5), name


@pytest.mark.parametrize("case", CASES)
def test_bf16_error_is_jax_attentions_bf16_error(case):
  """In bf16 both differ from the fp32 result by bf16 rounding, ours no more than jax's
  (plus a margin of the same order: the two round at different points)."""
  q, k, v, mask, cotangent = _inputs(*CASES[case], jnp.float32)
  exact = _value_and_grads(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, scale=0.3),
                           q, k, v, cotangent)
  low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  ours = _value_and_grads(lambda q, k, v: dense_attention(q, k, v, mask, 0.3), *low, cotangent)
  jaxs = _value_and_grads(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, scale=0.3),
                          *low, cotangent)
  for name, e, a, b in zip(("out", "dq", "dk", "dv"), exact, ours, jaxs):
    assert a.dtype == jnp.bfloat16, name
    scale = float(jnp.max(jnp.abs(e)))
    ours_error = float(jnp.max(jnp.abs(a.astype(jnp.float32) - e))) / scale
    jax_error = float(jnp.max(jnp.abs(b.astype(jnp.float32) - e))) / scale
    assert ours_error <= jax_error + 2 ** -8, (name, ours_error, jax_error)


def test_backward_keeps_no_logits():
  """The residuals of the gradient are q, k, v and the probabilities: no fp32 [B, H, T, S]
  array beside the probabilities (autodiff of the same forward keeps the masked logits and
  the softmax's exponentials as well)."""
  q, k, v, mask, _ = _inputs(2, 16, 16, 8, 2, 8, jnp.float32)
  _, pullback = jax.vjp(lambda q, k, v: dense_attention(q, k, v, mask, 0.3), q, k, v)
  assert len(_score_residuals(pullback)) == 1
  _, plain = jax.vjp(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, scale=0.3), q, k, v)
  assert len(_score_residuals(plain)) > 1


def _score_residuals(pullback) -> list:
  """The float arrays of [..., T, S] = [..., 16, 16] a pullback keeps, each of B x H x T x S."""
  return [x for x in jax.tree.leaves(pullback)
          if jnp.issubdtype(getattr(x, "dtype", jnp.int32), jnp.floating) and x.ndim >= 4
          and x.shape[-2:] == (16, 16) and x.size == 2 * 8 * 16 * 16]
