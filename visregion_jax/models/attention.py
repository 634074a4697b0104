"""The attention switch (`model.attention`): one call, `attend`, for the XLA path and the
fused kernels.

"xla" is `jax.nn.dot_product_attention` over a dense boolean mask: XLA materializes the
T x T scores, the largest activation of a layer at 2048 tokens. The fused kernels
("splash" on TPU, "gpu": cuDNN or Pallas flash attention) never build a T x T array.
They take segment ids instead, one per token: the packed sample it belongs to (1..n),
0 for padding. Padding on either side thus shares its id with no real token, so no
real query sees it. "auto" picks the platform's kernel, and "xla" on CPU. A forward
with a KV cache (decoding) stays on "xla": its few query rows have no T x T term.

The choice is static model config, resolved when a forward is traced; `interpret`
runs the Pallas kernels in Pallas's interpreter, so CPU tests check them.
"""

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from visregion_jax.errors import VisRegionError
from visregion_jax.models import gpu_attention
from visregion_jax.models.attention_mesh import sharded
from visregion_jax.models.dense_attention import dense_attention, segment_mask
from visregion_jax.models.splash import splash_attention

IMPLEMENTATIONS = ("auto", "xla", "splash", "gpu")
PLATFORM_OF = {"splash": "tpu", "gpu": "gpu"}  # where a kernel compiles (elsewhere: interpret only)
KERNELS = {"splash": splash_attention, "cudnn": gpu_attention.cudnn_attention,
           "pallas": gpu_attention.pallas_attention}


def check_choice(attention, interpret, prefix: str = "model.") -> None:
  """VisRegionError unless `attention` is one of IMPLEMENTATIONS that can run here."""
  if attention not in IMPLEMENTATIONS:
    raise VisRegionError(f"{prefix}attention", f"expected one of {list(IMPLEMENTATIONS)}, got {attention!r}")
  if not isinstance(interpret, bool):
    raise VisRegionError(f"{prefix}attention_interpret", f"expected True or False, got {interpret!r}")
  platform = PLATFORM_OF.get(attention)
  if platform and not interpret and jax.default_backend() != platform:
    raise VisRegionError(f"{prefix}attention", f"{attention!r} compiles for {platform.upper()} only, this is "
                         f"{jax.default_backend()}: use \"auto\" or \"xla\", or attention_interpret=True")


def resolve(attention: str, interpret: bool) -> str:
  """"xla", "splash" or "gpu": "auto" becomes the kernel of the platform."""
  check_choice(attention, interpret)
  if attention == "auto":
    return {"tpu": "splash", "gpu": "gpu"}.get(jax.default_backend(), "xla")
  return attention


@functools.partial(jax.tree_util.register_dataclass, data_fields=("mask", "q_segments", "kv_segments"),
                   meta_fields=("implementation", "causal", "window", "interpret"))
@dataclasses.dataclass(frozen=True)
class Masking:
  """What attention needs besides q, k, v; built once per forward and shared by its layers.

  The XLA path takes `mask` [B, 1, T, S]; the fused ones take `q_segments` [B, T] and
  `kv_segments` [B, S] (None: every token real), `causal` and `window` (keys at slot
  distance < window, causal only).
  """
  implementation: str  # resolved: "xla", "splash" or "gpu"
  causal: bool
  window: Optional[int] = None
  interpret: bool = False
  mask: Optional[jax.Array] = None
  q_segments: Optional[jax.Array] = None
  kv_segments: Optional[jax.Array] = None


def token_segments(valid, segment_ids=None):
  """int32 [B, T] ids for the kernels: each real token's segment (1 unpacked), 0 for padding."""
  ids = jnp.ones(valid.shape, jnp.int32) if segment_ids is None else jnp.asarray(segment_ids, jnp.int32)
  return jnp.where(valid, ids, 0)


def kernel_of(masking: Masking, q, k) -> str:
  """The kernel that runs this call: "xla", "splash", "cudnn" or "pallas".

  Bidirectional attention of queries over other keys (SigLIP's pooling probe) stays
  on XLA: the fused paths pad queries and keys alike, which needs self-attention.
  """
  q_len, kv_len = q.shape[1], k.shape[1]
  impl = masking.implementation
  if impl == "xla" or (not masking.causal and q_len != kv_len):
    return "xla"
  if impl == "gpu":
    return gpu_attention.route(q_len=q_len, kv_len=kv_len, head_dim=q.shape[-1], dtype=q.dtype,
                               has_segments=masking.q_segments is not None, causal=masking.causal,
                               window=masking.window, interpret=masking.interpret)
  return impl


def attend(q, k, v, masking: Masking, scale: float):
  """q [B, T, H, d], k / v [B, S, KV, d] (H a multiple of KV) -> [B, T, H, d]."""
  kernel = kernel_of(masking, q, k)
  if kernel == "xla":
    mask = masking.mask
    if mask is None:
      mask = segment_mask(q.shape[1], k.shape[1], masking.causal, masking.window, masking.q_segments,
                          masking.kv_segments)
    return dense_attention(q, k, v, mask, scale)
  run = functools.partial(KERNELS[kernel], causal=masking.causal, window=masking.window, scale=scale,
                          interpret=masking.interpret)
  return sharded(run, q, k, v, masking.q_segments, masking.kv_segments)
