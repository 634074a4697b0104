"""The training objective: next-token cross-entropy over supervised tokens.

Returned as (sum, count) rather than a mean, so gradient accumulation and evaluation
can weight every supervised token of a global batch equally, whatever the split.
"""

import jax.numpy as jnp
import optax

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
  """Per-token next-token cross-entropy [B, T-1], zero where not supervised, and the mask."""
  out = model.forward(batch["input_ids"], **model_inputs(model, batch))
  logits = out.logits[:, :-1].astype(jnp.float32)
  targets = batch["labels"][:, 1:]
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
