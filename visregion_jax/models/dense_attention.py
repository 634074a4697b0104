"""The "xla" attention path: a dense boolean mask [B, 1, T, S] and
`jax.nn.dot_product_attention`, which XLA computes by materializing the T x S scores.

It is the reference the fused kernels are tested against, the path of decoding with a
KV cache (one or a few query rows: no T x T term to save), and the fallback for the
cases a fused kernel cannot express (models/gpu_attention.py routes them here).
"""

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
  """q [B, T, H, d], k / v [B, S, KV, d] (H a multiple of KV), mask [B, 1, T, S] or None."""
  return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale)
