"""RMSNorm and SwiGLU with their own backward passes: autodiff's gradients, and less
kept from the forward pass to the backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from visregion_jax.models.elementwise import in_backward, rms_norm, swiglu

EPS = 1e-5


def plain_rms_norm(x, scale):
  """The autodiff reference: the same expression without a custom backward."""
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + EPS)
  return scale.astype(x.dtype) * normed.astype(x.dtype)


def plain_swiglu(gate, up):
  return jax.nn.silu(gate) * up


def ours_rms_norm(x, scale):
  return rms_norm(x, scale, EPS)


def close(ours, plain, rtol):
  for a, b in zip(ours, plain):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.max(np.abs(a - b)) <= rtol * np.max(np.abs(b))


def test_rms_norm_equals_autodiff():
  x, d_out = jax.random.normal(jax.random.key(0), (2, 3, 5, 16)) * jnp.array([3.0, 1.0])[:, None, None, None]
  scale = 1 + 0.5 * jax.random.normal(jax.random.key(1), (16,))
  assert np.array_equal(ours_rms_norm(x, scale), plain_rms_norm(x, scale))
  close(jax.vjp(ours_rms_norm, x, scale)[1](d_out), jax.vjp(plain_rms_norm, x, scale)[1](d_out), 1e-6)


def test_rms_norm_bf16_is_as_close_to_fp32_as_autodiff():
  """In bf16 the backward computes in fp32 (autodiff of the reference rounds the scaled
  product to bf16): no further from the fp32 gradients than autodiff's."""
  x, d_out = jax.random.normal(jax.random.key(2), (2, 64, 32))
  scale = 1 + 0.5 * jax.random.normal(jax.random.key(3), (32,))
  exact = jax.vjp(plain_rms_norm, x, scale)[1](d_out)
  low = lambda f: jax.vjp(f, x.astype(jnp.bfloat16), scale)[1](d_out.astype(jnp.bfloat16))
  assert np.array_equal(ours_rms_norm(x.astype(jnp.bfloat16), scale),
                        plain_rms_norm(x.astype(jnp.bfloat16), scale))
  for ours, plain, want in zip(low(ours_rms_norm), low(plain_rms_norm), exact):
    assert ours.dtype == plain.dtype
    assert error(ours, want) <= error(plain, want) * 1.05


def error(gradient, want) -> float:
  return float(jnp.max(jnp.abs(gradient.astype(jnp.float32) - want)))


def test_swiglu_equals_autodiff():
  gate, up, d_out = jax.random.normal(jax.random.key(4), (3, 4, 5, 16))
  gate = gate * 4   # through silu's bend and both tails
  assert np.array_equal(swiglu(gate, up), plain_swiglu(gate, up))
  close(jax.vjp(swiglu, gate, up)[1](d_out), jax.vjp(plain_swiglu, gate, up)[1](d_out), 1e-5)


def test_in_backward_is_exact_and_passes_no_gradient():
  x, cotangent = jax.random.normal(jax.random.key(5), (2, 8))
  assert np.array_equal(in_backward(x, cotangent), x)
  assert np.array_equal(jax.grad(lambda c: jnp.sum(in_backward(x, c)))(cotangent), np.zeros_like(x))


def block(norm, act, width, layers):
  """A stack of norm -> (gate, up) -> SwiGLU -> down, as a decoder's MLP half; the loss
  of its output. The compiled gradient's temporaries hold what each layer keeps."""
  def loss(x, scales, gates, ups, downs):
    for s, g, u, d in zip(scales, gates, ups, downs):
      h = norm(x, s)
      x = x + act(h @ g, h @ u) @ d
    return jnp.sum(x * x)
  return loss


@pytest.mark.parametrize("which", ["rms_norm", "swiglu"])
def test_each_keeps_one_array_less_per_layer(which):
  """Compiled by XLA, each layer's kept activations shrink by the array the custom
  backward drops (the normalized input; sigmoid(gate) or silu(gate)), within a margin
  of a tenth of it for XLA's other choices."""
  tokens, width, hidden, layers = 256, 32, 128, 6
  keys = jax.random.split(jax.random.key(6), 5)
  args = (jax.random.normal(keys[0], (tokens, width)), jnp.ones((layers, width)),
          jax.random.normal(keys[1], (layers, width, hidden)) / 8,
          jax.random.normal(keys[2], (layers, width, hidden)) / 8,
          jax.random.normal(keys[3], (layers, hidden, width)) / 8)
  ours = {"rms_norm": block(ours_rms_norm, plain_swiglu, width, layers),
          "swiglu": block(plain_rms_norm, swiglu, width, layers)}[which]
  plain = block(plain_rms_norm, plain_swiglu, width, layers)
  temp = lambda f: jax.jit(jax.grad(f, argnums=(0, 1, 2))).lower(*args).compile().memory_analysis().temp_size_in_bytes
  dropped = {"rms_norm": tokens * width * 4, "swiglu": tokens * hidden * 4}[which] * layers
  assert temp(plain) - temp(ours) >= 0.9 * dropped
