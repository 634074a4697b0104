"""The optimizer against AdamW written out by hand in numpy.

The reference follows the formulas, not optax: global-norm clipping, Adam moments
with bias correction, weight decay decoupled from the moments (lr * wd * param, as
PyTorch's AdamW applies it), and the schedule of LLaVA's trainer (transformers'
cosine-with-warmup: linear from 0 over ceil(warmup_ratio * steps) steps, then a half
cosine to 0 at `steps`). Each group has its own peak learning rate, so a parameter
given the wrong group's rate goes off the reference at once. Weight decay reaches
every trainable parameter, norm scales and biases included (HF's Trainer exempts
those; the configs here all train with weight_decay 0).
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from visregion_jax import optim, plan
from visregion_jax.plan import TrainingPlan

B1, B2, EPS = 0.9, 0.999, 1e-8
STEPS = 10
MAX_GRAD_NORM = 1.0
# Gradient scale per step: global norms well above and below MAX_GRAD_NORM.
GRAD_SCALES = (3.0, 0.05, 2.0, 0.1, 0.02, 5.0, 0.3, 1.5, 0.05, 4.0)
SHAPES = {"projector/linears/0/kernel": (6, 4), "projector/linears/0/bias": (4,),
          "layers/1/mlp/down_proj/kernel": (4, 5), "layers/1/input_layernorm/scale": (4,),
          "vision_tower/layers/0/fc1/kernel": (3, 4)}


def train_config(**overrides) -> ml_collections.ConfigDict:
  values = dict(lr=2e-2, projector_lr=7e-2, vision_lr=4e-3, weight_decay=0.1, warmup_ratio=0.25,
                steps=STEPS, max_grad_norm=MAX_GRAD_NORM)
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def labels_of(names) -> dict:
  """The plan's group of each parameter (region layer 1, the tower trained)."""
  trained = TrainingPlan(region_layers=(1,), train_vision=True)
  return {name: trained.label(tuple(name.split("/")), nnx.Param(0.0)) for name in names}


def problem():
  """Initial parameters and one gradient tree per step (fixed seeds)."""
  rng = np.random.RandomState(0)
  params = {name: rng.randn(*shape).astype(np.float32) for name, shape in SHAPES.items()}
  grads = [{name: (scale * rng.randn(*shape)).astype(np.float32) for name, shape in SHAPES.items()}
           for scale in GRAD_SCALES]
  return params, grads


def hand_lr(peak: float, t: int, warmup_ratio: float, steps: int) -> float:
  """transformers' get_cosine_schedule_with_warmup at optimizer step t (0-based)."""
  warmup = math.ceil(warmup_ratio * steps)
  if t < warmup:
    return peak * t / warmup
  progress = (t - warmup) / (steps - warmup)
  return peak * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def hand_adamw(params: dict, grads: list, group_lr: dict, config) -> tuple:
  """(parameters after each step, whether each step clipped), in float64."""
  p = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  history, clipped = [], []
  for t, g in enumerate(grads):
    g = {k: x.astype(np.float64) for k, x in g.items()}
    norm = math.sqrt(sum(float((x ** 2).sum()) for x in g.values()))
    clipped.append(norm > config.max_grad_norm)
    if clipped[-1]:
      g = {k: x * config.max_grad_norm / norm for k, x in g.items()}
    for k in p:
      m[k] = B1 * m[k] + (1 - B1) * g[k]
      v[k] = B2 * v[k] + (1 - B2) * g[k] ** 2
      m_hat = m[k] / (1 - B1 ** (t + 1))
      v_hat = v[k] / (1 - B2 ** (t + 1))
      lr = hand_lr(group_lr[k], t, config.warmup_ratio, config.steps)
      p[k] = p[k] - lr * (m_hat / (np.sqrt(v_hat) + EPS) + config.weight_decay * p[k])
    history.append(dict(p))
  return history, clipped


def optax_run(params: dict, grads: list, config) -> list:
  """Parameters after each step of make_optimizer's transform, jitted as training runs it."""
  tx, _ = optim.make_optimizer(config, labels_of(params))
  state = tx.init(params)

  @jax.jit
  def step(params, state, g):
    updates, state = tx.update(g, state, params)
    return jax.tree.map(jnp.add, params, updates), state

  history = []
  for g in grads:
    params, state = step(params, state, g)
    history.append({k: np.asarray(x) for k, x in params.items()})
  return history


def group_lrs(config) -> dict:
  """Each parameter's peak lr, read off the config by its group (the test's own mapping)."""
  by_label = {plan.REGION: config.lr, plan.PROJECTOR: config.projector_lr,
              plan.VISION: config.vision_lr}
  return {k: by_label[label] for k, label in labels_of(SHAPES).items()}


def test_labels_cover_every_group():
  labels = labels_of(SHAPES)
  assert [labels[k] for k in SHAPES] == [plan.PROJECTOR, plan.PROJECTOR, plan.REGION,
                                         plan.REGION, plan.VISION]


def test_schedules_equal_transformers_cosine_with_warmup():
  config = train_config()
  _, schedules = optim.make_optimizer(config, labels_of(SHAPES))
  peaks = {plan.REGION: config.lr, plan.PROJECTOR: config.projector_lr,
           plan.VISION: config.vision_lr}
  for label, peak in peaks.items():
    got = [float(schedules[label](t)) for t in range(STEPS + 1)]
    want = [hand_lr(peak, t, config.warmup_ratio, STEPS) for t in range(STEPS + 1)]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12, err_msg=label)
  assert float(schedules[plan.REGION](3)) == pytest.approx(config.lr)  # peak at ceil(0.25*10)


def test_adamw_steps_equal_hand_adamw():
  config = train_config()
  params, grads = problem()
  want, clipped = hand_adamw(params, grads, group_lrs(config), config)
  assert 0 < sum(clipped) < len(clipped)  # clipping is exercised both ways
  got = optax_run(params, grads, config)
  for t, (g, w) in enumerate(zip(got, want)):
    for k in w:
      np.testing.assert_allclose(g[k], w[k], rtol=1e-5, atol=1e-5, err_msg=f"step {t} {k}")


def test_swapped_group_rates_leave_the_reference():
  """Guards the comparison: with lr and projector_lr swapped in the optimizer (the hand
  reference kept), both groups' parameters move off the reference."""
  config = train_config()
  params, grads = problem()
  want, _ = hand_adamw(params, grads, group_lrs(config), config)
  got = optax_run(params, grads, train_config(lr=config.projector_lr, projector_lr=config.lr))
  labels = labels_of(SHAPES)
  for label in (plan.REGION, plan.PROJECTOR):
    names = [k for k in SHAPES if labels[k] == label]
    error = max(float(np.abs(g[k] - w[k]).max()) for g, w in zip(got, want) for k in names)
    assert error > 1e-3, label
