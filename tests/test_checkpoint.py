"""Training checkpoints restore exactly what was saved: the trainable parameters and the
optimizer state bit for bit, and the metadata (the step is the data position: the
pipeline's samples are a function of seed and step); a template of another config is
refused with one VisRegionError line."""

import functools
import os
import types

import jax
import numpy as np
import pytest
from flax import nnx

from visregion_jax import optim
from visregion_jax.errors import VisRegionError
from visregion_jax.models.config import DecoderConfig
from visregion_jax.models.llama import build_decoder
from visregion_jax.plan import TrainingPlan
from visregion_jax.train.checkpoint import TrainCheckpoints

CONFIG = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=3,
                       num_heads=4, num_kv_heads=2, head_dim=8)
TRAIN = types.SimpleNamespace(lr=1e-2, projector_lr=1e-2, vision_lr=1e-2, steps=10, warmup_ratio=0.1,
                              weight_decay=0.01, max_grad_norm=1.0)
META = {"step": 4, "bad_steps_in_a_row": 1, "skipped": {"too_long": 2}, "base_fingerprint": "ab12",
        "init_from": "/some/where", "region_layers": [0, 2], "loss": 1.25}


@functools.lru_cache(maxsize=None)
def trainable_state(lora_layers=(0, 2)):
  """LoRA factors of `lora_layers` (B made non-zero, as after training) and their AdamW
  state after two updates, so moments and step counters are not at their init. Cached:
  each call compiles its optimizer step."""
  model = build_decoder(CONFIG, seed=0)
  plan = TrainingPlan(region_layers=lora_layers, lora_rank=4, lora_alpha=8.0)
  plan.prepare(model, seed=0)
  rng = np.random.RandomState(0)
  noise = lambda params: jax.tree.map(lambda x: rng.randn(*x.shape).astype(x.dtype), params)
  params = nnx.state(model, nnx.LoRAParam)
  params = jax.tree.map(lambda x, n: x + n, params, noise(params))
  tx, _ = optim.make_optimizer(TRAIN, plan.labels(params))
  opt_state = tx.init(params)
  for _ in range(2):
    params, opt_state = jax.jit(adam_step, static_argnums=0)(tx, params, opt_state, noise(params))
  return params, opt_state


def adam_step(tx, params, opt_state, grads):
  updates, opt_state = tx.update(grads, opt_state, params)
  return jax.tree.map(lambda p, u: p + u, params, updates), opt_state


def assert_bit_exact(got, want):
  got_leaves, want_leaves = jax.tree.leaves_with_path(got), jax.tree.leaves_with_path(want)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  assert len(got_leaves) == len(want_leaves) > 0
  for (path, a), (_, b) in zip(got_leaves, want_leaves):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, jax.tree_util.keystr(path)
    assert a.tobytes() == b.tobytes(), jax.tree_util.keystr(path)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A run's checkpoint at step 4."""
  workdir = str(tmp_path_factory.mktemp("run"))
  params, opt_state = trainable_state()
  checkpoints = TrainCheckpoints(workdir)
  assert checkpoints.latest_step() is None
  checkpoints.save(4, params, opt_state, META)
  checkpoints.wait()
  checkpoints.close()
  return workdir, params, opt_state


def test_round_trip_is_exact(saved):
  workdir, params, opt_state = saved
  # the same layout, other values
  template_params, template_opt = jax.tree.map(np.zeros_like, (params, opt_state))
  checkpoints = TrainCheckpoints(workdir)
  assert checkpoints.latest_step() == 4
  got_params, got_opt, meta = checkpoints.restore(4, template_params, template_opt)
  checkpoints.close()
  assert isinstance(got_params, nnx.State)
  assert_bit_exact(got_params, params)
  assert_bit_exact(got_opt, opt_state)
  assert meta == META


def test_restore_trainable_only(saved):
  workdir, params, _ = saved
  checkpoints = TrainCheckpoints(workdir)
  got = checkpoints.restore_trainable(checkpoints.latest_step(), jax.tree.map(np.zeros_like, params))
  checkpoints.close()
  assert_bit_exact(got, params)


def other_layers():
  return trainable_state(lora_layers=(1,))


def other_shape_params():
  params, opt_state = trainable_state()
  return jax.tree.map(lambda x: np.zeros(x.shape[:-1] + (x.shape[-1] + 1,), x.dtype), params), opt_state


@pytest.mark.parametrize("template", [other_layers, other_shape_params], ids=["other_layers", "other_shape"])
@pytest.mark.parametrize("trainable_only", [False, True], ids=["restore", "restore_trainable"])
def test_template_of_another_config_is_refused(saved, template, trainable_only):
  workdir = saved[0]
  params, opt_state = template()
  checkpoints = TrainCheckpoints(workdir)
  with pytest.raises(VisRegionError) as e:
    if trainable_only:
      checkpoints.restore_trainable(4, params)
    else:
      checkpoints.restore(4, params, opt_state)
  checkpoints.close()
  assert e.value.where == os.path.join(workdir, "checkpoints", "4")
  assert e.value.expected.startswith("expected a checkpoint of this config")
  assert "\n" not in str(e.value)


def test_rotation_keeps_the_newest(tmp_path):
  params, opt_state = trainable_state()
  checkpoints = TrainCheckpoints(str(tmp_path), keep=2)
  for step in (2, 4, 6):
    checkpoints.save(step, params, opt_state, {**META, "step": step})
  checkpoints.wait()
  assert checkpoints.latest_step() == 6
  assert sorted(os.listdir(checkpoints.directory)) == ["4", "6"]
  with pytest.raises(VisRegionError, match="checkpoints/2: expected a checkpoint"):
    checkpoints.restore_trainable(2, params)
  _, _, meta = checkpoints.restore(4, params, opt_state)
  assert meta["step"] == 4
  checkpoints.close()
