"""The "splash" attention path: Pallas splash attention on TPU (the kernel MaxText and
EasyDeL train with), per device.

The kernel takes one sample's heads [H, T, d] and keys / values [KV, S, d]: grouped
query attention is native (each KV head serves H / KV query heads, no repeat), the
static mask (causal, causal within a local window for Phi-3's sliding_window, or
full for the vision towers) is tiled once at trace time so blocks that are all
masked are skipped, and segment ids mask packed samples and padding on the fly.
The batch is a vmap over it. Block sizes are the largest of 512 / 256 / 128 that
divide the padded length (kernel_padding.py). With `interpret=True` the same kernel
runs through Pallas's interpreter, which is how the CPU tests check it.
"""

from typing import Optional

import jax
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from visregion_jax.models.kernel_padding import block_size, pad_to_blocks


def static_mask(q_len: int, kv_len: int, causal: bool, window: Optional[int], offset: int):
  """One head's mask: query i is key slot i + offset; the window keeps keys with
  slot distance < window, as the XLA path's mask does."""
  if window is not None:
    return splash.LocalMask((q_len, kv_len), window_size=(window - 1, 0), offset=offset)
  if causal:
    return splash.CausalMask((q_len, kv_len), offset=offset)
  return splash.FullMask((q_len, kv_len))


def block_sizes(q_len: int, kv_len: int) -> splash.BlockSizes:
  bq, bkv = block_size(q_len), block_size(kv_len)
  return splash.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
                           block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)


def splash_attention(q, k, v, q_segments, kv_segments, *, causal: bool, window: Optional[int], scale: float,
                     interpret: bool):
  """q [B, T, H, d], k / v [B, S, KV, d], segment ids [B, T] / [B, S] or None -> [B, T, H, d]."""
  q_len, heads = q.shape[1], q.shape[2]
  q, k, v, q_segments, kv_segments, offset = pad_to_blocks(q, k, v, q_segments, kv_segments, causal=causal)
  q_padded, kv_padded = q.shape[1], k.shape[1]
  mask = splash.MultiHeadMask([static_mask(q_padded, kv_padded, causal, window, offset)] * heads)
  kernel = splash.make_splash_mha(mask, block_sizes=block_sizes(q_padded, kv_padded), head_shards=1,
                                  q_seq_shards=1, interpret=interpret)
  heads_first = lambda x: x.transpose(0, 2, 1, 3)
  q, k, v = heads_first(q * scale), heads_first(k), heads_first(v)
  if q_segments is None:
    out = jax.vmap(kernel)(q, k, v)
  else:
    out = jax.vmap(lambda q, k, v, qs, ks: kernel(q, k, v, segment_ids=splash.SegmentIds(qs, ks)))(
        q, k, v, q_segments, kv_segments)
  return heads_first(out)[:, :q_len]
