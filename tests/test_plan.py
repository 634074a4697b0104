"""The training plan: one table of (parameter, plan) -> label, and what follows from the
labels (the split, the optimizer groups, the LoRA merge of an export)."""

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from visregion_jax import optim
from visregion_jax.config import base_config
from visregion_jax.errors import VisRegionError
from visregion_jax.models.config import DecoderConfig
from visregion_jax.models.llama import build_decoder
from visregion_jax.plan import FROZEN, LORA, PROJECTOR, REGION, VISION, TrainingPlan, decoder_layer_of

FULL = TrainingPlan(region_layers=(1, 3))
LORA_PLAN = TrainingPlan(region_layers=(1, 3), lora_rank=4, lora_alpha=8.0)
WITH_TOWER = TrainingPlan(region_layers=(1,), train_vision=True)
HEALING = TrainingPlan(region_layers=(1,), train_projector=False)  # pruning's healing
PARAM, FACTOR = nnx.Param(np.zeros(1)), nnx.LoRAParam(np.zeros(1))

# (plan, path, variable, label): every kind of parameter an LVLM or a decoder has.
TABLE = [
    (FULL, ("projector", "linear_1", "kernel"), PARAM, PROJECTOR),
    (FULL, ("vision_tower", "layers", 0, "mlp", "fc1", "kernel"), PARAM, FROZEN),
    (WITH_TOWER, ("vision_tower", "layers", 0, "mlp", "fc1", "kernel"), PARAM, VISION),
    (FULL, ("language_model", "layers", 1, "self_attn", "q_proj", "kernel"), PARAM, REGION),
    (FULL, ("language_model", "layers", 2, "self_attn", "q_proj", "kernel"), PARAM, FROZEN),
    (FULL, ("language_model", "layers", 3, "input_layernorm", "scale"), PARAM, REGION),
    (FULL, ("layers", 3, "mlp", "down_proj", "kernel"), PARAM, REGION),        # a bare decoder
    (FULL, ("layers", "3", "mlp", "down_proj", "kernel"), PARAM, REGION),      # str path parts
    (FULL, ("language_model", "embed_tokens", "embedding"), PARAM, FROZEN),
    (FULL, ("language_model", "norm", "scale"), PARAM, FROZEN),
    (FULL, ("lm_head", "kernel"), PARAM, FROZEN),
    (LORA_PLAN, ("language_model", "layers", 1, "self_attn", "q_proj", "kernel"), PARAM, FROZEN),
    (LORA_PLAN, ("language_model", "layers", 1, "self_attn", "q_proj", "lora_a"), FACTOR, LORA),
    (LORA_PLAN, ("layers", 3, "mlp", "up_proj", "lora_b"), FACTOR, LORA),
    (LORA_PLAN, ("layers", 2, "mlp", "up_proj", "lora_b"), FACTOR, FROZEN),   # outside the region
    (LORA_PLAN, ("layers", 1, "mlp", "up_proj", "named_lora_a"), PARAM, FROZEN),  # type, not name
    (LORA_PLAN, ("projector", "linear_2", "bias"), PARAM, PROJECTOR),
    (TrainingPlan(region_layers=()), ("layers", 0, "mlp", "up_proj", "kernel"), PARAM, FROZEN),
    (HEALING, ("projector", "linear_1", "kernel"), PARAM, FROZEN),
    (HEALING, ("language_model", "layers", 1, "self_attn", "q_proj", "kernel"), PARAM, REGION),
]


@pytest.mark.parametrize("plan, path, variable, label", TABLE)
def test_label_table(plan, path, variable, label):
  assert plan.label(path, variable) == label
  assert plan.is_trainable(path, variable) == (label != FROZEN)


@pytest.mark.parametrize("path, layer", [
    (("layers", 0, "mlp"), 0), (("language_model", "layers", 7, "x"), 7), (("projector", "kernel"), None),
    (("vision_tower", "layers", 2, "x"), None), (("embed_tokens", "embedding"), None)])
def test_decoder_layer_of(path, layer):
  assert decoder_layer_of(path) == layer


def region_config(**region) -> ml_collections.ConfigDict:
  config = base_config()
  config.region.update(region)
  return config


@pytest.mark.parametrize("region, layers, rank", [
    ({"strategy": "uniform", "lora_rank": 0}, (1, 5, 9, 13, 19, 23, 27, 31), 0),
    ({"strategy": "explicit", "layers": (4, 2, 4)}, (2, 4), 128),
    ({"strategy": "none"}, (), 128),
    ({"strategy": "first", "fraction": 0.125}, (0, 1, 2, 3), 128)])
def test_from_config(region, layers, rank):
  plan = TrainingPlan.from_config(region_config(**region), 32)
  assert plan.region_layers == layers and plan.lora_rank == rank
  assert TrainingPlan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize("region, key", [
    ({"lora_rank": -1}, "region.lora_rank"), ({"fraction": 0.0}, "region.fraction"),
    ({"strategy": "explicit", "layers": (40,)}, "region.layers"), ({"strategy": "random"}, "region.strategy"),
    ({"strategy": "none", "train_projector": False}, "region.train_projector")])
def test_from_config_errors(region, key):
  with pytest.raises(VisRegionError, match=key):
    TrainingPlan.from_config(region_config(**region), 32)


CONFIG = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=4,
                       num_heads=4, num_kv_heads=2, head_dim=8)


def prepared(plan: TrainingPlan):
  model = build_decoder(CONFIG, seed=0)
  plan.prepare(model, seed=0)
  return model


def test_split_holds_exactly_the_labelled_parameters():
  _, trainable, frozen, _ = LORA_PLAN.split(prepared(LORA_PLAN))
  paths = {tuple(p) for p, _ in nnx.to_flat_state(trainable)}
  assert paths == {("layers", i, block, lin, f) for i in (1, 3)
                   for block, lins in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                                       ("mlp", ("gate_proj", "up_proj", "down_proj")))
                   for lin in lins for f in ("lora_a", "lora_b")}
  assert all(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(trainable))
  assert not any(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(frozen))
  assert set(jax.tree.leaves(LORA_PLAN.labels(trainable))) == {LORA}


def test_prepare_casts_trainable_to_float32_and_frozen_to_compute():
  plan = TrainingPlan(region_layers=(2,))
  model = build_decoder(CONFIG.replace(dtype="bfloat16"), seed=0)
  plan.prepare(model, seed=0)
  for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    want = np.float32 if decoder_layer_of(path) == 2 else np.dtype("bfloat16")
    assert v.get_value().dtype == want, path


def test_optimizer_groups_follow_the_labels():
  """Each trainable leaf is updated at its own group's learning rate: with constant
  gradients Adam's step is lr times the sign, so after the one warmup step (lr 0)
  region and projector move by lr and projector_lr respectively."""
  params = {"region": np.ones(3, np.float32), "projector": np.ones(2, np.float32)}
  labels = {"region": REGION, "projector": PROJECTOR}
  train = ml_collections.ConfigDict(dict(lr=1e-2, projector_lr=1e-4, vision_lr=0.0, weight_decay=0.0,
                                         warmup_ratio=0.0, steps=10, max_grad_norm=1e9))
  tx, schedules = optim.make_optimizer(train, labels)
  assert sorted(schedules) == [PROJECTOR, REGION]
  grads = {"region": np.ones(3, np.float32), "projector": np.ones(2, np.float32)}
  updates, state = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["region"], 0.0)  # warmup starts at 0
  updates, _ = tx.update(grads, state, params)
  np.testing.assert_allclose(updates["region"], -1e-2, rtol=1e-4)
  np.testing.assert_allclose(updates["projector"], -1e-4, rtol=1e-4)


def test_frozen_labels_never_reach_the_optimizer():
  train = base_config().train
  with pytest.raises(ValueError, match="frozen"):
    optim.make_optimizer(train, {"a": FROZEN, "b": REGION})
  with pytest.raises(VisRegionError, match="nothing is trainable"):
    optim.make_optimizer(train, {})


def test_merge_lora_folds_factors_into_kernels():
  """Export's merge: W + (alpha / r) A B, by hand in numpy; afterwards no factor is left
  and the merged model computes what the LoRA model computed (dropout off)."""
  model = prepared(LORA_PLAN)
  rng = np.random.RandomState(0)
  dense = model.layers[1].mlp.up_proj
  dense.lora_b.set_value(rng.randn(*dense.lora_b.shape).astype(np.float32))
  w, a, b = (np.asarray(x[...]) for x in (dense.kernel, dense.lora_a, dense.lora_b))
  model.eval()
  ids = rng.randint(0, CONFIG.vocab_size, (2, 7)).astype(np.int32)
  before = np.asarray(model(ids))
  LORA_PLAN.merge_lora(model)
  np.testing.assert_allclose(np.asarray(dense.kernel[...]), w + (8.0 / 4) * a @ b, rtol=1e-5, atol=1e-6)
  assert not any(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(nnx.state(model)))
  np.testing.assert_allclose(np.asarray(model(ids)), before, atol=1e-4)


def test_describe():
  assert FULL.describe() == "region layers [1, 3]; full update"
  assert LORA_PLAN.describe() == "region layers [1, 3]; LoRA r=4"
  assert TrainingPlan(region_layers=()).describe() == "projector only"
  assert HEALING.describe() == "region layers [1]; full update; projector frozen"
