"""The "gpu" attention path: cuDNN flash attention where it covers the case, the Pallas
GPU flash kernel where it does not, and the XLA path for what neither expresses.

- cuDNN (`jax.nn.dot_product_attention(implementation="cudnn")`) is the fastest on
  Hopper and takes grouped KV heads and a causal window natively, but needs bf16 / fp16
  and a head_dim <= 128 that is a multiple of 8, and knows padding only as per-sample
  lengths (right padding): neither packed segments nor left padding. It gets the
  attention whose tokens are all real: the vision towers, unpadded decoder batches.
- Pallas GPU flash attention (`jax.experimental.pallas.ops.gpu.attention.mha`) takes
  segment ids, so packed rows and padding on either side. It has no grouped heads (KV
  heads are repeated: H / KV times the k / v tensors, far below a T x T term) and no
  window; its ids are shared by queries and keys and its causal mask has no offset.
- So a window that binds (some query-key distance reaches it) together with segment
  ids, and queries shorter than the keys (decoding), go to the XLA path: the first is
  Phi-3 packed past its 2047-token window, the second costs one query row.
`route` decides from static facts only (shapes, dtype, whether ids exist), so the
choice is made once per trace and is tested on CPU, where the cuDNN call itself cannot
run; its arguments are checked there through the same call with implementation="xla".
"""

from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.gpu import attention as pallas_gpu

from visregion_jax.models.kernel_padding import LANE, pad_to_blocks

CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
CUDNN_MAX_HEAD_DIM = 128


def route(*, q_len: int, kv_len: int, head_dim: int, dtype, has_segments: bool, causal: bool,
          window: Optional[int], interpret: bool) -> str:
  """"cudnn", "pallas" or "xla" for one attention call (see the module docstring)."""
  if q_len != kv_len:
    return "xla"
  if (not interpret and not has_segments and jnp.dtype(dtype) in CUDNN_DTYPES
      and head_dim <= CUDNN_MAX_HEAD_DIM and head_dim % 8 == 0):
    return "cudnn"
  if causal and window is not None and window < kv_len:
    return "xla"
  return "pallas"


def cudnn_attention(q, k, v, q_segments, kv_segments, *, causal: bool, window: Optional[int], scale: float,
                    interpret: bool, implementation: str = "cudnn"):
  """cuDNN's fused attention; only routed here without segment ids (every token real)."""
  del q_segments, kv_segments, interpret
  local = None if window is None else (window - 1, 0)
  return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal, local_window_size=local,
                                      implementation=implementation)


def pallas_attention(q, k, v, q_segments, kv_segments, *, causal: bool, window: Optional[int], scale: float,
                     interpret: bool):
  """Pallas GPU flash attention on self-attention (q_len == kv_len, one id array for
  both); a window is only routed here when no query-key distance reaches it."""
  del q_segments, window
  seq_len, heads, kv_heads = q.shape[1], q.shape[2], k.shape[2]
  k = jnp.repeat(k, heads // kv_heads, axis=2)
  v = jnp.repeat(v, heads // kv_heads, axis=2)
  q, k, v, _, segments, _ = pad_to_blocks(q, k, v, kv_segments, kv_segments, causal=causal, multiple=LANE)
  out = pallas_gpu.mha(q, k, v, segments, sm_scale=scale, causal=causal, interpret=interpret)
  return out[:, :seq_len]
