"""The optimizer: AdamW per trainable group over the training plan's labels.

Only trainable parameters enter the optimizer at all (frozen ones are never
differentiated, see train_step), so moments exist for the region / LoRA / projector
parameters alone; `optax.multi_transform` gives each group its own learning rate.
"""

import math

import jax
import optax

from visregion_jax import plan
from visregion_jax.errors import VisRegionError


def schedule(peak_lr: float, steps: int, warmup_ratio: float) -> optax.Schedule:
  """Linear warmup over `warmup_ratio` of the steps, then cosine decay to zero (LLaVA's)."""
  warmup = int(math.ceil(warmup_ratio * steps))
  return optax.warmup_cosine_decay_schedule(0.0, peak_lr, max(warmup, 1), max(steps, warmup + 1), 0.0)


def group_learning_rates(train_config) -> dict:
  return {plan.REGION: train_config.lr, plan.LORA: train_config.lr,
          plan.PROJECTOR: train_config.projector_lr, plan.VISION: train_config.vision_lr}


def make_optimizer(train_config, labels) -> tuple:
  """(optax transform, {label: schedule}) for a label tree of the trainable parameters."""
  present = sorted(set(jax.tree.leaves(labels)))
  if not present:
    raise VisRegionError("region.strategy", "nothing is trainable (expected region layers or a projector)")
  if plan.FROZEN in present:
    raise ValueError("frozen parameters must not reach the optimizer")
  lrs = group_learning_rates(train_config)
  schedules = {label: schedule(lrs[label], train_config.steps, train_config.warmup_ratio)
               for label in present}
  groups = {label: optax.adamw(schedules[label], b1=0.9, b2=0.999, eps=1e-8,
                               weight_decay=train_config.weight_decay)
            for label in present}
  tx = optax.chain(optax.clip_by_global_norm(train_config.max_grad_norm),
                   optax.multi_transform(groups, labels))
  return tx, schedules
