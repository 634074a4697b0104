"""How much each decoder layer changes the hidden states, on calibration data.

Scores come from the hidden states entering and leaving each layer over calibration
tokens (`block_influence` = 1 - E[cos(h_i, h_{i+n})], ShortGPT; `angular` =
E[arccos(cos)] / pi, Gromov et al.), streamed batch by batch so memory does not grow
with the calibration set. Pruning removes low-scoring layers (`prune.layer_scores`);
the `scored` region strategy trains high-scoring ones (train/region_probe.py).
"""

import functools
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from visregion_jax.errors import VisRegionError
from visregion_jax.models.lvlm import LVLM

METRICS = ("block_influence", "angular")
TOKEN_SUBSETS = ("all", "text", "image")


def _forward_inputs(model, batch: dict) -> dict:
  inputs = {"attention_mask": batch["attention_mask"]}
  if isinstance(model, LVLM) and batch.get("pixel_values") is not None:
    inputs["pixel_values"] = batch["pixel_values"]
    if batch.get("image_mask") is not None:
      inputs["image_mask"] = batch["image_mask"]
  return inputs


@functools.partial(jax.jit, static_argnames=("graphdef", "metric", "block_size", "subset"))
def _batch_sums(graphdef, state, batch, *, metric, block_size, subset):
  """Per-block sums of the token metric and the number of tokens counted."""
  model = nnx.merge(graphdef, state)
  out = model.forward(batch["input_ids"], hidden_states=True, logits="none", **_forward_inputs(model, batch))
  hs = [h.astype(jnp.float32) for h in out.hidden_states]
  counted = batch["attention_mask"].astype(bool)
  if subset != "all":
    is_image = batch["input_ids"] == model.config.image_token_id
    counted &= is_image if subset == "image" else ~is_image
  sums = []
  for i in range(len(hs) - block_size):
    a, b = hs[i], hs[i + block_size]
    cos = jnp.sum(a * b, -1) / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), 1e-12)
    value = 1.0 - cos if metric == "block_influence" else jnp.arccos(jnp.clip(cos, -1.0, 1.0)) / jnp.pi
    sums.append(jnp.sum(jnp.where(counted, value, 0.0)))
  return jnp.stack(sums), jnp.sum(counted)


def layer_scores(model, batches: Iterable[dict], *, metric: str = "block_influence",
                 block_size: int = 1, tokens: str = "all") -> np.ndarray:
  """Score of each decoder layer (each block of `block_size` layers starting there).

  batches: dicts with input_ids [B, T], attention_mask [B, T] (1 = real token) and,
  for an LVLM, pixel_values (and optionally image_mask). `tokens` restricts the mean
  to text or image tokens.
  """
  if metric not in METRICS:
    raise VisRegionError("prune.metric", f"expected one of {list(METRICS)}, got {metric!r}")
  if tokens not in TOKEN_SUBSETS:
    raise VisRegionError("prune.tokens", f"expected one of {list(TOKEN_SUBSETS)}, got {tokens!r}")
  num_layers = len(model.layers)
  if not 1 <= block_size <= num_layers:
    raise VisRegionError("prune.block_size", f"expected 1..{num_layers}, got {block_size}")
  graphdef, state = nnx.split(model)
  total, count = None, 0
  for batch in batches:
    batch = {k: jnp.asarray(v) for k, v in batch.items() if k in
             ("input_ids", "attention_mask", "pixel_values", "image_mask")}
    sums, n = _batch_sums(graphdef, state, batch, metric=metric, block_size=block_size, subset=tokens)
    total = np.asarray(sums, np.float64) if total is None else total + np.asarray(sums, np.float64)
    count += int(n)
  if total is None or count == 0:
    raise VisRegionError("prune.calibration", "expected calibration batches with at least one counted token")
  return total / count

