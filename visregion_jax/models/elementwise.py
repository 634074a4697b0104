"""The decoder layer's elementwise functions, RMSNorm and SwiGLU, with backward passes
that keep less than autodiff does.

Autodiff keeps every intermediate its backward reads: the normalized input beside the
scaled one, sigmoid(gate) and silu(gate) beside gate and up. Each is a
[tokens, features] array per layer that lives from the forward to the backward pass;
together they were a fifth of the full step's peak (BUILD.md, "What the fixes
bought"). Their backward passes here keep the inputs only and recompute the rest from
them, a few elementwise operations inside fusions that read those inputs anyway.
"""

import functools

import jax
import jax.numpy as jnp


def in_backward(x: jnp.ndarray, cotangent: jnp.ndarray) -> jnp.ndarray:
  """`x`, made to depend on the cotangent, so that what the backward recomputes from
  it is computed in the backward pass.

  Without it, XLA merges the recomputation with the forward's identical expression
  (common-subexpression elimination), or schedules it early because its input is
  ready, and keeps the result alive until the backward: the very array the custom
  backward exists to drop. `jax.lax.optimization_barrier` states the same intent, but
  XLA:CPU removes barriers before scheduling; a data dependence holds on every backend.
  Adding zero times the cotangent is exact for a finite cotangent (a non-finite one
  makes the gradient non-finite either way) and costs one fused multiply-add.
  """
  return x + jnp.zeros((), x.dtype) * cotangent.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x: jnp.ndarray, scale: jnp.ndarray, eps: float) -> jnp.ndarray:
  """HF's LlamaRMSNorm: normalizes in float32, scales in the input dtype. The backward
  keeps x and the reciprocal RMS per row, not the normalized x."""
  return _rms_norm_forward(x, scale, eps)[0]


def _rms_norm_forward(x, scale, eps):
  x32 = x.astype(jnp.float32)
  inv_rms = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return scale.astype(x.dtype) * (x32 * inv_rms).astype(x.dtype), (x, scale, inv_rms)


def _rms_norm_backward(eps, residuals, d_out):
  del eps  # inv_rms already holds it
  x, scale, inv_rms = residuals
  normed = in_backward(x, d_out).astype(jnp.float32) * inv_rms
  d_out32 = d_out.astype(jnp.float32)
  d_scale = jnp.sum(d_out32 * normed, axis=tuple(range(x.ndim - 1)))
  d_normed = d_out32 * scale.astype(jnp.float32)
  d_x = inv_rms * (d_normed - normed * jnp.mean(d_normed * normed, axis=-1, keepdims=True))
  return d_x.astype(x.dtype), d_scale.astype(scale.dtype)


rms_norm.defvjp(_rms_norm_forward, _rms_norm_backward)


@jax.custom_vjp
def swiglu(gate: jnp.ndarray, up: jnp.ndarray) -> jnp.ndarray:
  """silu(gate) * up. The backward keeps gate and up, not sigmoid(gate) and silu(gate)."""
  return jax.nn.silu(gate) * up


def _swiglu_backward(residuals, d_hidden):
  gate, up = residuals
  gate = in_backward(gate, d_hidden)
  sig = jax.nn.sigmoid(gate)
  silu = gate * sig
  return d_hidden * up * (sig + silu * (1 - sig)), d_hidden * silu


swiglu.defvjp(lambda gate, up: (swiglu(gate, up), (gate, up)), _swiglu_backward)
