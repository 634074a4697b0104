"""Next-token cross-entropy straight from the final hidden states, in tiles of tokens.

The plain loss materializes the logits of every token, [B, T, V] in the compute dtype
plus fp32 copies (B*T*V*(b + 8) bytes: 1.5 GiB for 1024 tokens of Llama-3's 128k
vocabulary in fp32). Here each row's T positions are cut into tiles of `tile` tokens
and one tile's logits [B, tile, V] exist at a time, as MaxText's vocabulary tiling
cuts the hidden states before the unembedding. Tiles run along T, not over the flat
tokens, so the batch axis keeps its sharding over (data, fsdp); the vocabulary is
whole in every tile, so the head's weight is never sliced and keeps its sharding
over `tensor` (each tile's log-sum-exp is then a reduction XLA partitions as it
partitions the plain one).

A `jax.custom_vjp` carries the gradient. Its forward pass, for each tile, computes
the logits, their fp32 log-sum-exp (kept, one float per token), the loss, and at once
the hidden-state gradient of an unweighted loss, (softmax - onehot) W^T. Each token's
loss depends on its own hidden state only, so the backward pass scales that by the
token's cotangent: the head's logits are computed once, never recomputed, which is
what matters here because the training plan always freezes the head. Only a head
that is differentiated needs d_W = sum over tiles of h^T (g * (softmax - onehot)):
the backward pass recomputes each tile's logits for it (from the kept log-sum-exp)
and accumulates in fp32. For a frozen head that loop's result is unused and XLA
removes it (tests/test_tiled_loss.py counts the compiled loops).

Tokens whose target is `IGNORE_INDEX` have loss and gradient 0. Numerics follow the
plain path: logits in the compute dtype, then fp32 for the log-sum-exp.
"""

import functools
import math

import jax
import jax.numpy as jnp

from visregion_jax.data.tokenize import IGNORE_INDEX

# model.loss_tiles = 0 tiles a micro-batch whose fp32 logits (per device) would exceed
# this, in tiles of at most this size each.
AUTO_TILE_BYTES = 64 * 2 ** 20


def tile_tokens(setting: int, rows: int, seq: int, vocab: int) -> int:
  """Positions per tile of a row for `model.loss_tiles` = `setting` (0: automatic,
  1: the plain path, N: N tiles), `rows` rows per device of `seq` positions over a
  vocabulary of `vocab`. `seq` means the plain path; fewer, the tiled one."""
  tiles = setting or math.ceil(rows * seq * vocab * 4 / AUTO_TILE_BYTES)
  return math.ceil(seq / max(1, min(tiles, seq)))


def _tiles(seq: int, tile: int):
  """(number of tiles, the start of tile i, its mask of positions it owns [tile]).

  The last tile is shifted back to end at `seq` (dynamic_slice clamps it there) and
  owns only the positions no earlier tile had, so no position is counted twice and
  nothing is padded."""
  count = math.ceil(seq / tile)

  def where(i):
    nominal = i * tile
    start = jnp.minimum(nominal, seq - tile)
    return start, start + jnp.arange(tile) >= nominal

  return count, where


def _slice(x, start, tile):
  return jax.lax.dynamic_slice_in_dim(x, start, tile, axis=1)


def _add_at(acc, start, value):
  return jax.lax.dynamic_update_slice_in_dim(acc, _slice(acc, start, value.shape[1]) + value, start, axis=1)


def _logits(h, w, vocab_major: bool):
  """One tile's logits [B, tile, V] in the compute dtype (h's), then fp32."""
  return (h @ (w.T if vocab_major else w)).astype(jnp.float32)


def _tile_terms(hidden, w, targets, vocab_major: bool, tile: int, i, where):
  """Tile i: its start, logits (fp32), targets (0 where ignored) and the mask of the
  positions it owns that are supervised."""
  start, owned = where(i)
  t = _slice(targets, start, tile)
  logits = _logits(_slice(hidden, start, tile), w, vocab_major)
  counted = owned[None, :] & (t != IGNORE_INDEX)
  return start, logits, jnp.where(counted, t, 0), counted


def _losses_and_lse(hidden, weight, targets, vocab_major: bool, tile: int, with_grad: bool):
  """Per-token losses [B, T] fp32, their log-sum-exp, and (with_grad) the unweighted
  hidden-state gradient [B, T, E]."""
  b, seq, e = hidden.shape
  w = weight.astype(hidden.dtype)
  count, where = _tiles(seq, tile)

  def body(i, carry):
    losses, lses, dh = carry
    start, logits, t, counted = _tile_terms(hidden, w, targets, vocab_major, tile, i, where)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
    losses = _add_at(losses, start, jnp.where(counted, lse - picked, 0.0))
    lses = _add_at(lses, start, jnp.where(counted, lse, 0.0))
    if with_grad:
      d = _softmax_minus_onehot(logits, lse, t, counted).astype(hidden.dtype)
      dh = _add_at(dh, start, d @ (w if vocab_major else w.T))
    return losses, lses, dh

  zeros = jnp.zeros((b, seq), jnp.float32)
  dh = jnp.zeros((b, seq, e), hidden.dtype) if with_grad else None
  return jax.lax.fori_loop(0, count, body, (zeros, zeros, dh))


def _softmax_minus_onehot(logits, lse, t, counted):
  """d loss / d logits of the tile's counted tokens (0 elsewhere), fp32."""
  onehot = jnp.arange(logits.shape[-1])[None, None, :] == t[..., None]
  return jnp.where(counted[..., None], jnp.exp(logits - lse[..., None]) - onehot, 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _token_losses(hidden, weight, targets, vocab_major: bool, tile: int):
  return _losses_and_lse(hidden, weight, targets, vocab_major, tile, with_grad=False)[0]


def _fwd(hidden, weight, targets, vocab_major: bool, tile: int):
  losses, lses, dh = _losses_and_lse(hidden, weight, targets, vocab_major, tile, with_grad=True)
  return losses, (hidden, weight, targets, lses, dh)


def _bwd(vocab_major: bool, tile: int, residuals, g):
  hidden, weight, targets, lses, dh = residuals
  d_hidden = (dh * g[..., None]).astype(hidden.dtype)
  w = weight.astype(hidden.dtype)
  count, where = _tiles(hidden.shape[1], tile)

  def body(i, dw):
    start, logits, t, counted = _tile_terms(hidden, w, targets, vocab_major, tile, i, where)
    d = _softmax_minus_onehot(logits, _slice(lses, start, tile), t, counted)
    d = (d * _slice(g, start, tile)[..., None]).astype(hidden.dtype)
    h = _slice(hidden, start, tile)
    spec = "btv,bte->ve" if vocab_major else "bte,btv->ev"
    operands = (d, h) if vocab_major else (h, d)
    return dw + jnp.einsum(spec, *operands, preferred_element_type=jnp.float32)

  dw = jax.lax.fori_loop(0, count, body, jnp.zeros(weight.shape, jnp.float32))
  return d_hidden, dw.astype(weight.dtype), None


_token_losses.defvjp(_fwd, _bwd)


def token_losses(hidden, weight, targets, *, vocab_major: bool, tile: int):
  """Per-token next-token cross-entropy [B, T] (fp32, 0 where `targets` is IGNORE_INDEX)
  of final hidden states `hidden` [B, T, E] (after the final norm, in the compute
  dtype) under the LM head `weight`: the tied embedding [V, E] (`vocab_major`) or the
  head's kernel [E, V]. `targets` [B, T] is what each position predicts; `tile`
  positions of every row are computed at a time (tile_tokens)."""
  return _token_losses(hidden, weight, targets, vocab_major, tile)
