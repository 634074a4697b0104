"""The jitted train step: rematerialized layers compute the same step as stored ones.

Remat only trades memory for recomputation, so with LoRA dropout active (the masks
must be replayed identically in the backward pass) and with a full layer update,
two steps with `remat=True` must give the losses, gradients and parameters of
`remat=False`.
"""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from visregion_jax.data.tokenize import IGNORE_INDEX as IGNORE
from visregion_jax.models.config import DecoderConfig
from visregion_jax.models.llama import build_decoder
from visregion_jax.plan import TrainingPlan
from visregion_jax.train.step import make_train_step

CONFIG = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=3,
                       num_heads=4, num_kv_heads=2, head_dim=8)


def batch(seed: int) -> dict:
  rng = np.random.RandomState(seed)
  ids = rng.randint(0, CONFIG.vocab_size, size=(4, 12)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, :3] = 0  # left padding
  labels = np.where(mask == 1, ids, IGNORE)
  labels[:, :5] = IGNORE  # a prompt that is not supervised
  return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_two_steps(remat: bool, lora_dropout):
  """Metrics of two steps and the trainable params after them."""
  model = build_decoder(CONFIG.replace(remat=remat), seed=0)
  plan = TrainingPlan(region_layers=(1,)) if lora_dropout is None else \
      TrainingPlan(region_layers=(1,), lora_rank=4, lora_alpha=8.0, lora_dropout=lora_dropout)
  plan.prepare(model, seed=0)
  graphdef, params, frozen, rest = plan.split(model)
  tx = optax.adamw(1e-2)
  opt_state = tx.init(params)
  step = make_train_step(graphdef, tx, accum_steps=2, seed=0)
  metrics = []
  for i in range(2):
    params, rest, opt_state, m = jax.jit(step)(params, frozen, rest, opt_state, batch(i), i)
    metrics.append(m)
  jaxpr = str(jax.make_jaxpr(step)(params, frozen, rest, opt_state, batch(0), 0))
  return metrics, params, jaxpr


@pytest.mark.parametrize("lora_dropout", [None, 0.5], ids=["full_update", "lora_dropout"])
def test_remat_step_equals_stored_step(lora_dropout):
  stored_metrics, stored, stored_jaxpr = train_two_steps(False, lora_dropout)
  remat_metrics, remat, remat_jaxpr = train_two_steps(True, lora_dropout)
  # The backward pass recomputes the layers' matmuls: remat is really on.
  assert remat_jaxpr.count("dot_general") > stored_jaxpr.count("dot_general")
  for a, b in zip(stored_metrics, remat_metrics):
    assert bool(a["finite"]) and bool(b["finite"])
    np.testing.assert_allclose(float(b["loss"]), float(a["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(b["grad_norm"]), float(a["grad_norm"]), rtol=1e-5)
  for (path, a), (_, b) in zip(nnx.to_flat_state(stored), nnx.to_flat_state(remat)):
    np.testing.assert_allclose(np.asarray(b.get_value()), np.asarray(a.get_value()), atol=1e-5,
                               err_msg=str(path))


def test_lora_dropout_is_active_under_remat():
  """Guards the comparison above: with dropout, the remat step's loss is not the
  dropout-free one, so equal losses really mean equal masks."""
  with_dropout, _, _ = train_two_steps(True, 0.5)
  without, _, _ = train_two_steps(True, 0.0)
  assert abs(float(with_dropout[1]["loss"]) - float(without[1]["loss"])) > 1e-4
