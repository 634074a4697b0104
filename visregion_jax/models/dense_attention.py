"""The "xla" attention path: a dense boolean mask [B, 1, T, S] and
`jax.nn.dot_product_attention`, which XLA computes by materializing the T x S scores.

It is the reference the fused kernels are tested against, the path of decoding with a
KV cache (one or a few query rows: no T x T term to save), and the fallback for the
cases a fused kernel cannot express (models/gpu_attention.py routes them here).
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp


def make_attention_mask(query_slots, key_slots, key_valid, sliding_window: Optional[int],
                        query_segments=None, key_segments=None):
  """Boolean [B, 1, T, S]: causal over slots, real keys only, optional sliding window;
  with segment ids [B, T] / [B, S] (packed rows) only keys of the query's own segment.

  Real tokens occupy consecutive slots (padding is only on the left or right, and a
  packed sample is one contiguous run), so the slot distance equals the position
  distance the sliding window is defined on.
  """
  q = query_slots[:, None]
  k = key_slots[None, :]
  allowed = k <= q
  if sliding_window is not None:
    allowed &= (q - k) < sliding_window
  allowed = allowed[None] & key_valid[:, None, :]
  if query_segments is not None:
    allowed &= query_segments[:, :, None] == key_segments[:, None, :]
  return allowed[:, None]


def segment_mask(q_len: int, kv_len: int, causal: bool, window: Optional[int],
                 q_segments=None, kv_segments=None):
  """The dense mask of what the fused kernels take (segment ids, causal, window), or None
  when every query sees every key. The queries are the last `q_len` key slots."""
  if not causal and q_segments is None:
    return None
  q = (kv_len - q_len + jnp.arange(q_len))[:, None]
  k = jnp.arange(kv_len)[None, :]
  allowed = jnp.ones((q_len, kv_len), bool)
  if causal:
    allowed &= k <= q
  if window is not None:
    allowed &= (q - k) < window
  allowed = allowed[None]
  if q_segments is not None:
    allowed = allowed & (q_segments[:, :, None] == kv_segments[:, None, :])
  return allowed[:, None]


def dense_attention(q, k, v, mask, scale: float):
  """q [B, T, H, d], k / v [B, S, KV, d] (H a multiple of KV), mask [B, 1, T, S] or None.

  `jax.nn.dot_product_attention`'s XLA path in numbers (fp32 logits and softmax, masked
  logits set to -0.7 x the dtype's max, so a row with no key averages them all), laid out
  heads-major: each KV head's G query heads are one [G*T, d] operand, so both matmuls are
  plain batched GEMMs over (B, KV). jax's version vmaps over the G query heads of a group
  and broadcasts the mask to each, which XLA:CPU lowers to 5-D transposes of q, the
  logits and the mask in both passes (BUILD.md, "What the fixes bought").
  """
  b, t, h, d = q.shape
  kv = k.shape[2]
  g = h // kv
  heads_major = q.reshape(b, t, kv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, d)
  if mask is None:
    mask = jnp.ones((1, 1, 1, 1), bool)
  out = _grouped_attention(heads_major, k, v, mask, g, scale)
  return out.reshape(b, kv, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def _logits(heads_major, k, groups: int, scale: float):
  """fp32 (for fp32 or narrower inputs) scaled logits [B, KV, G, T, S]."""
  b, kv, gt, _ = heads_major.shape
  logits = jnp.einsum("bkqd,bskd->bkqs", heads_major, k, precision=_precision(k.dtype),
                      preferred_element_type=jnp.promote_types(k.dtype, jnp.float32))
  return (logits * jnp.asarray(scale, logits.dtype)).reshape(b, kv, groups, gt // groups, k.shape[1])


def _probs(heads_major, k, mask, groups: int, scale: float):
  logits = _logits(heads_major, k, groups, scale)
  limit = min(float(jnp.finfo(logits.dtype).max), float(jnp.finfo(jnp.float32).max))
  logits = jnp.where(mask[:, :, None], logits, jnp.asarray(-0.7 * limit, logits.dtype))
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(k.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _grouped_attention(heads_major, k, v, mask, groups: int, scale: float):
  """Attention of heads-major queries [B, KV, G*T, d] -> [B, KV, G*T, d].

  Its backward keeps q, k, v and the probabilities only, as flash attention's does
  (with its log-sum-exp in place of the probabilities): autodiff of the same forward
  also keeps the masked logits and the softmax's exponentials, two more [B, H, T, S]
  fp32 arrays per layer, the largest activations of a layer at this path's lengths.
  """
  return _grouped_attention_forward(heads_major, k, v, mask, groups, scale)[0]


def _grouped_attention_forward(heads_major, k, v, mask, groups, scale):
  probs = _probs(heads_major, k, mask, groups, scale)
  b, kv, gt, _ = heads_major.shape
  out = jnp.einsum("bkqs,bskd->bkqd", probs.reshape(b, kv, gt, -1), v)
  return out, (heads_major, k, v, mask, probs)


def _grouped_attention_backward(groups, scale, residuals, d_out):
  heads_major, k, v, mask, probs = residuals
  b, kv, gt, _ = heads_major.shape
  flat = probs.reshape(b, kv, gt, -1)
  d_v = jnp.einsum("bkqs,bkqd->bskd", flat, d_out.astype(v.dtype))
  d_probs = jnp.einsum("bkqd,bskd->bkqs", d_out, v, precision=_precision(v.dtype),
                       preferred_element_type=jnp.float32).reshape(probs.shape)
  p32 = probs.astype(jnp.float32)
  d_logits = p32 * (d_probs - jnp.sum(d_probs * p32, axis=-1, keepdims=True))
  d_logits = jnp.where(mask[:, :, None], d_logits, 0.0) * scale
  d_logits = d_logits.astype(k.dtype).reshape(flat.shape)
  d_q = jnp.einsum("bkqs,bskd->bkqd", d_logits, k).astype(heads_major.dtype)
  d_k = jnp.einsum("bkqs,bkqd->bskd", d_logits, heads_major).astype(k.dtype)
  return d_q, d_k, d_v.astype(v.dtype), None


_grouped_attention.defvjp(_grouped_attention_forward, _grouped_attention_backward)


def _precision(dtype):
  """A bf16 / f16 matmul into fp32 names its algorithm, as jax's attention does, so the
  matmuls keep consistent types (jax issue 24047)."""
  return {jnp.dtype(jnp.bfloat16): jax.lax.DotAlgorithmPreset.BF16_BF16_F32,
          jnp.dtype(jnp.float16): jax.lax.DotAlgorithmPreset.F16_F16_F32}.get(jnp.dtype(dtype))
