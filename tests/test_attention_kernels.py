"""The fused attention kernels against the XLA path, in Pallas interpret mode on CPU.

The reference is what the decoder computed before the switch: jax.nn.dot_product_attention
over `make_attention_mask` (causal over slots, real keys only, the sliding window, same
segment). The kernels get segment ids instead (attention.token_segments: 0 for padding).
Outputs of padding query rows are not defined by either path, so outputs are compared
on real query rows and gradients with respect to q, k and v are those of a loss over
real rows. Lengths are small (one or two 128-token blocks) because the interpreter runs
each kernel's grid step by step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from visregion_jax.models import attention, gpu_attention
from visregion_jax.models.dense_attention import make_attention_mask

FWD_ATOL, GRAD_ATOL = 1e-5, 1e-4


def case_inputs(name: str):
  """(q_len, kv_len, heads, kv_heads, head_dim, valid [B, S], packed ids [B, S] or None, window)."""
  b, t = 2, 200
  valid = np.ones((b, t), bool)
  ids, window, q_len, heads, kv_heads, d = None, None, t, 2, 2, 64
  if name == "left_padding":
    valid[0, :37] = False
  elif name == "right_padding":
    valid[1, 150:] = False
  elif name in ("packed", "sliding_window"):
    ids = np.zeros((b, t), np.int32)
    ids[0, :90], ids[0, 90:170], ids[0, 170:] = 1, 2, 3
    ids[1, :120], ids[1, 120:190] = 1, 2  # then padding
    valid = ids > 0
    window = 33 if name == "sliding_window" else None
  elif name == "gqa":
    heads, kv_heads = 8, 2
    valid[0, :20] = False
  elif name == "head_dim_128":
    d = 128
    valid[1, 180:] = False
  elif name == "one_query":
    q_len = 1
    valid[0, :60] = False
  elif name == "causal":
    t = q_len = 256  # two whole blocks: no padding at all
    valid = np.ones((b, t), bool)
  return q_len, t, heads, kv_heads, d, valid, ids, window


CASES = ["causal", "left_padding", "right_padding", "packed", "sliding_window", "gqa", "head_dim_128", "one_query"]


def reference_and_masking(name: str, implementation: str):
  q_len, t, heads, kv_heads, d, valid, ids, window = case_inputs(name)
  b = valid.shape[0]
  keys = jax.random.split(jax.random.key(CASES.index(name)), 4)
  q = jax.random.normal(keys[0], (b, q_len, heads, d), jnp.float32)
  k = jax.random.normal(keys[1], (b, t, kv_heads, d), jnp.float32)
  v = jax.random.normal(keys[2], (b, t, kv_heads, d), jnp.float32)
  cotangent = jax.random.normal(keys[3], q.shape, jnp.float32)
  seg = attention.token_segments(jnp.asarray(valid), None if ids is None else jnp.asarray(ids))
  q_seg = seg[:, t - q_len:]
  dense = make_attention_mask(jnp.arange(t - q_len, t), jnp.arange(t), jnp.asarray(valid), window,
                              None if ids is None else q_seg, None if ids is None else seg)
  padded = name != "causal"
  masking = attention.Masking(implementation, causal=True, window=window, interpret=True,
                              q_segments=q_seg if padded else None, kv_segments=seg if padded else None)
  real_rows = jnp.asarray(valid[:, t - q_len:])[:, :, None, None]
  return (q, k, v), cotangent * real_rows, real_rows, dense, masking


def run(fn, inputs, cotangent):
  out, vjp = jax.vjp(fn, *inputs)
  return out, vjp(cotangent)


@pytest.mark.parametrize("implementation", ["splash", "gpu"])
@pytest.mark.parametrize("name", CASES)
def test_kernel_equals_xla(name, implementation):
  inputs, cotangent, real_rows, dense, masking = reference_and_masking(name, implementation)
  scale = inputs[0].shape[-1] ** -0.5
  want, want_grads = run(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=dense, scale=scale),
                         inputs, cotangent)
  got, got_grads = run(jax.jit(lambda q, k, v: attention.attend(q, k, v, masking, scale)), inputs, cotangent)
  np.testing.assert_allclose(np.asarray(got * real_rows), np.asarray(want * real_rows), atol=FWD_ATOL, rtol=0)
  for what, g, w in zip("qkv", got_grads, want_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=GRAD_ATOL, rtol=0, err_msg=f"d{what}")


@pytest.mark.parametrize("name, kernel", [
    ("causal", "pallas"), ("left_padding", "pallas"), ("packed", "pallas"), ("gqa", "pallas"),
    ("sliding_window", "xla"),  # a window that binds, with segment ids: neither GPU kernel
    ("one_query", "xla"),       # queries shorter than keys: the Pallas GPU kernel has no causal offset
])
def test_gpu_cases_route_to_the_kernel_that_can(name, kernel):
  (q, k, _), _, _, _, masking = reference_and_masking(name, "gpu")
  assert attention.kernel_of(masking, q, k) == kernel


@pytest.mark.parametrize("change, want", [
    ({}, "cudnn"),
    ({"has_segments": True}, "pallas"),             # packed rows or padding: cuDNN has no segment ids
    ({"dtype": jnp.float32}, "pallas"),             # cuDNN flash attention is bf16 / fp16 only
    ({"head_dim": 256}, "pallas"),
    ({"interpret": True}, "pallas"),                # CPU tests: cuDNN cannot run there
    ({"window": 2047}, "cudnn"),                    # cuDNN takes the causal window itself
    ({"window": 2047, "has_segments": True}, "xla"),
    ({"window": 4096, "has_segments": True}, "pallas"),  # a window that never binds is no window
    ({"q_len": 1}, "xla"),
])
def test_gpu_route(change, want):
  args = dict(q_len=2048, kv_len=2048, head_dim=128, dtype=jnp.bfloat16, has_segments=False, causal=True,
              window=None, interpret=False)
  args.update(change)
  assert gpu_attention.route(**args) == want


@pytest.mark.parametrize("causal, window", [(True, None), (True, 33), (False, None)])
def test_cudnn_arguments(causal, window):
  """The cuDNN call, with only its implementation switched to XLA (cuDNN needs a GPU):
  its causal flag and window say what the dense mask says."""
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 96, 4, 16)) for i in range(3))
  got = gpu_attention.cudnn_attention(q, k, v, None, None, causal=causal, window=window, scale=0.25,
                                      interpret=False, implementation="xla")
  mask = make_attention_mask(jnp.arange(96), jnp.arange(96), jnp.ones((2, 96), bool), window) if causal else None
  want = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=0.25)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=FWD_ATOL, rtol=0)


def test_bidirectional_splash_equals_xla():
  """The vision towers' attention: no mask at all, a length off the block size (padded
  keys must stay invisible)."""
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 150, 2, 64)) for i in range(3))
  masking = attention.Masking("splash", causal=False, interpret=True)
  got, got_grads = run(jax.jit(lambda q, k, v: attention.attend(q, k, v, masking, 0.125)), (q, k, v), q)
  want, want_grads = run(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=0.125), (q, k, v), q)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=FWD_ATOL, rtol=0)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=GRAD_ATOL, rtol=0)
