"""Padding q, k, v to the fused kernels' block multiples, with segment ids that keep the
padding out of every real row.

The kernels tile the sequence in blocks, so lengths that are not multiples are padded.
A padded slot gets segment id 0, the id of padding tokens: real tokens (ids >= 1)
never attend to it. Every padded query row must still see at least one key, or the
kernel's softmax divides by zero and the NaN reaches the gradients of k and v through
the backward pass (even with a zero output cotangent). So in self-attention each
padded query sees its own padded key; causal queries shorter than the keys (the last
`q_len` slots, as in decoding) get enough padded keys after the real ones that each
padded query's own slot is a padded key.
"""

import jax.numpy as jnp

LANE = 128  # TPU vector lane width: the splash kernel's blocks are multiples of it
BLOCKS = (512, 256, 128)  # block sizes tried, largest first


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def block_size(padded_len: int) -> int:
  """The largest of BLOCKS that divides `padded_len` (a multiple of LANE): 2048 tokens get
  512-token blocks, CLIP-336's 577 patches + CLS pad to 640 and get 128."""
  return next(b for b in BLOCKS if padded_len % b == 0)


def _pad_seq(x, length: int):
  pad = [(0, 0)] * x.ndim
  pad[1] = (0, length - x.shape[1])
  return jnp.pad(x, pad)


def pad_to_blocks(q, k, v, q_segments, kv_segments, *, causal: bool, multiple: int = LANE):
  """(q, k, v, q_segments, kv_segments, offset) padded along the sequence axis (1) to
  multiples of `multiple`; `offset` is the slot of query 0 among the keys (causal
  queries are the last q_len key slots; bidirectional ones must be self-attention,
  q_len == kv_len). Ids stay None when no padding was needed and none were given
  (every token real)."""
  b, q_len = q.shape[:2]
  kv_len = k.shape[1]
  offset = kv_len - q_len if causal else 0
  q_padded = round_up(q_len, multiple)
  kv_padded = round_up(max(kv_len, offset + q_padded) if causal else kv_len, multiple)
  if (q_padded, kv_padded) == (q_len, kv_len):
    return q, k, v, q_segments, kv_segments, offset
  if q_segments is None:
    q_segments = jnp.ones((b, q_len), jnp.int32)
    kv_segments = jnp.ones((b, kv_len), jnp.int32)
  return (_pad_seq(q, q_padded), _pad_seq(k, kv_padded), _pad_seq(v, kv_padded),
          _pad_seq(q_segments, q_padded), _pad_seq(kv_segments, kv_padded), offset)
