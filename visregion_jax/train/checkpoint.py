"""Training checkpoints: trainable parameters, optimizer state and metadata.

The frozen base is not copied: the metadata holds `model.init_from`, a fingerprint of
the base and the training plan, checked on resume. The data position is the step
itself (the pipeline's samples are a function of seed and step, data/pipeline.py), so
a checkpoint restores onto any process count or mesh. Trees are stored as flat {key path: array} dicts so
the layout does not depend on NNX or optax node classes, and restored onto the live
state's shardings. Orbax writes each step to a temporary directory and renames it
when complete, so a run killed mid-write leaves the previous checkpoint intact.
"""

import os

import jax
import orbax.checkpoint as ocp

from visregion_jax.errors import VisRegionError


def flat_dict(tree) -> dict:
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflat_like(template, flat: dict):
  paths, treedef = jax.tree_util.tree_flatten_with_path(template)
  return jax.tree_util.tree_unflatten(treedef, [flat[jax.tree_util.keystr(p)] for p, _ in paths])


def abstract_of(tree) -> dict:
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=getattr(v, "sharding", None))
          for k, v in flat_dict(tree).items()}


class TrainCheckpoints:
  def __init__(self, workdir: str, max_to_keep: int = 2):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_names=("trainable", "opt_state", "meta"))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, trainable, opt_state, meta: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        trainable=ocp.args.StandardSave(flat_dict(trainable)),
        opt_state=ocp.args.StandardSave(flat_dict(opt_state)),
        meta=ocp.args.JsonSave(meta)))

  def restore(self, step: int, trainable, opt_state) -> tuple:
    """(trainable, opt_state, meta) of `step`, placed like the given trees."""
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          trainable=ocp.args.StandardRestore(abstract_of(trainable)),
          opt_state=ocp.args.StandardRestore(abstract_of(opt_state)),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for missing / mismatched / corrupt data
      raise VisRegionError(os.path.join(self.directory, str(step)),
                           f"expected a checkpoint of this config ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    return unflat_like(trainable, out.trainable), unflat_like(opt_state, out.opt_state), out.meta

  def restore_trainable(self, step: int, trainable):
    """Only the trainable parameters of `step` (export needs nothing else)."""
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          trainable=ocp.args.StandardRestore(abstract_of(trainable))))
    except Exception as e:  # orbax raises many types for missing / mismatched / corrupt data
      raise VisRegionError(os.path.join(self.directory, str(step)),
                           f"expected a checkpoint of this config ({type(e).__name__})") from None
    return unflat_like(trainable, out.trainable)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
