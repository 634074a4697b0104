"""The model a training run has produced, rebuilt from its workdir (export, generation,
pruning of a run's result)."""

import os

import ml_collections
from flax import nnx

from visregion_jax.convert.tensor_files import read_json_object
from visregion_jax.errors import VisRegionError
from visregion_jax.train.builder import build_model
from visregion_jax.train.checkpoint import TrainCheckpoints


def is_training_workdir(path: str) -> bool:
  return os.path.isdir(os.path.join(path, "checkpoints")) and os.path.isfile(os.path.join(path, "config.json"))


def load_trained(workdir: str):
  """The model of a run's latest checkpoint: the base rebuilt from the run's config
  (the checkpoint references it), the trained parameters restored over it, and LoRA
  merged as an export would merge it."""
  config = ml_collections.ConfigDict(read_json_object(os.path.join(workdir, "config.json")))
  checkpoints = TrainCheckpoints(workdir)
  step = checkpoints.latest_intact_step()
  if step is None:
    raise VisRegionError(checkpoints.directory, "expected at least one training checkpoint")
  model, plan = build_model(config, workdir)
  graphdef, params, frozen, rest = plan.split(model)
  params = checkpoints.restore_trainable(step, params)
  checkpoints.close()
  model = nnx.merge(graphdef, params, frozen, rest)
  plan.merge_lora(model)
  return model
