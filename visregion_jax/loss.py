"""The training objective: next-token cross-entropy over supervised tokens.

Returned as (sum, count) rather than a mean, so gradient accumulation and evaluation
can weight every supervised token of a global batch equally, whatever the split.

Two paths give the same numbers: the plain one takes the model's logits [B, T, V];
the tiled one (tiled_loss.py) takes the final hidden states and never holds more
than a tile of logits. The decoder config's `loss_tiles` (`model.loss_tiles`) picks
one per micro-batch shape, at trace time.
"""

import jax.numpy as jnp
import optax

from visregion_jax import sharding, tiled_loss
from visregion_jax.data.tokenize import IGNORE_INDEX
from visregion_jax.models.lvlm import LVLM


def model_inputs(model, batch: dict) -> dict:
  """What `model.forward` takes from a batch (an LVLM also gets the images; packed rows
  their segment ids)."""
  inputs = {"attention_mask": batch["attention_mask"]}
  if "segment_ids" in batch:
    inputs["segment_ids"] = batch["segment_ids"]
  if isinstance(model, LVLM):
    inputs.update(pixel_values=batch["pixel_values"], image_mask=batch["image_mask"])
  return inputs


def _supervised_losses(model, batch: dict):
  """Per-position next-token cross-entropy [B, T'] (T - 1 positions on the plain path,
  T on the tiled one, whose last position predicts nothing), zero where not supervised,
  and the mask."""
  decoder = model.language_model if isinstance(model, LVLM) else model
  labels = batch["labels"]
  rows, seq = labels.shape
  tile = tiled_loss.tile_tokens(decoder.config.loss_tiles, sharding.rows_per_device(rows), seq,
                                decoder.config.vocab_size)
  if tile < seq:
    out = model.forward(batch["input_ids"], logits="hidden", **model_inputs(model, batch))
    targets = jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], IGNORE_INDEX)], axis=1)
    weight, vocab_major = decoder.lm_head_weight()
    losses = tiled_loss.token_losses(out.final_hidden, weight, targets, vocab_major=vocab_major, tile=tile)
    return losses, targets != IGNORE_INDEX
  out = model.forward(batch["input_ids"], **model_inputs(model, batch))
  logits = out.logits[:, :-1].astype(jnp.float32)
  targets = labels[:, 1:]
  supervised = targets != IGNORE_INDEX
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(supervised, targets, 0))
  return jnp.where(supervised, losses, 0.0), supervised


def token_losses(model, batch: dict):
  """(sum of next-token cross-entropy over supervised tokens, their count)."""
  losses, supervised = _supervised_losses(model, batch)
  return jnp.sum(losses), jnp.sum(supervised)


def row_token_losses(model, batch: dict):
  """Per row: (sum of the supervised tokens' cross-entropy [B], their count [B]), so a
  study can resample samples (bootstrap) rather than only batches."""
  losses, supervised = _supervised_losses(model, batch)
  return jnp.sum(losses, axis=1), jnp.sum(supervised, axis=1)
