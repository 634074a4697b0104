"""Training checkpoints: trainable parameters, optimizer state and metadata, checksummed.

The frozen base is not copied: the metadata holds `model.init_from`, a fingerprint of
the base and the training plan, checked on resume. The data position is the step
itself (the pipeline's samples are a function of seed and step, data/pipeline.py), so
a checkpoint restores onto any process count or mesh. Trees are stored as flat
{key path: array} dicts so the layout does not depend on NNX or optax node classes,
and restored onto the live state's shardings.

Orbax writes each step to a temporary directory and renames it when complete, so a run
killed mid-write leaves the previous checkpoint intact. Once a step is committed its
files are checksummed (integrity.py): a save therefore waits for its write (seconds
every `train.checkpoint_every` steps, even for a 7B model's LoRA state) instead of
overlapping it with the next steps. Restoring starts from the newest step whose files
are all intact, with a warning line for each damaged one skipped. Rotation is ours: it
keeps the newest `keep` intact steps and every multiple of `keep_every`, and only ever
deletes steps older than the newest intact one.
"""

import contextlib
import logging
import os
import sys

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from visregion_jax.errors import VisRegionError
from visregion_jax.train import integrity


def flat_dict(tree) -> dict:
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflat_like(template, flat: dict):
  paths, treedef = jax.tree_util.tree_flatten_with_path(template)
  return jax.tree_util.tree_unflatten(treedef, [flat[jax.tree_util.keystr(p)] for p, _ in paths])


def abstract_of(tree) -> dict:
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=getattr(v, "sharding", None))
          for k, v in flat_dict(tree).items()}


@contextlib.contextmanager
def _quiet_orbax():
  """A failed restore leaves orbax's asyncio tasks to log their exceptions ("Task
  exception was never retrieved") after our one `error:` line; they say nothing new."""
  logger = logging.getLogger("asyncio")
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(level)


class TrainCheckpoints:
  def __init__(self, workdir: str, keep: int = 2, keep_every: int = 0):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.keep, self.keep_every = keep, keep_every
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True),
        item_names=("trainable", "opt_state", "meta"))

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def all_steps(self) -> list:
    return sorted(self.manager.all_steps())

  def latest_step(self):
    """The newest committed step (intact or not); see latest_intact_step."""
    return self.manager.latest_step()

  def latest_intact_step(self, warn=None):
    """The newest step whose files are all intact, or None when there is no checkpoint.
    Each damaged newer step is reported through `warn`; none intact is an error."""
    steps = self.all_steps()
    problems = []
    for step in reversed(steps):
      problem = integrity.damage(self.step_dir(step))
      if problem is None:
        if not integrity.has_manifest(self.step_dir(step)):
          (warn or _warn)(f"warning: checkpoint {self.step_dir(step)} has no checksums (the run stopped "
                          "right after writing it); restoring it as orbax committed it")
        return step
      problems.append(f"{step}: {problem}")
      (warn or _warn)(f"warning: checkpoint {self.step_dir(step)} is damaged ({problem}); "
                      "trying the one before it")
    if steps:
      raise VisRegionError(self.directory, f"expected an intact checkpoint, all are damaged: {'; '.join(problems)}")
    return None

  def save(self, step: int, trainable, opt_state, meta: dict) -> None:
    """Writes `step`, waits for its commit, checksums it (process 0) and rotates (every
    process: orbax's delete is collective; the barrier lets all see the manifest)."""
    self.manager.save(step, args=ocp.args.Composite(
        trainable=ocp.args.StandardSave(flat_dict(trainable)),
        opt_state=ocp.args.StandardSave(flat_dict(opt_state)),
        meta=ocp.args.JsonSave(meta)))
    self.manager.wait_until_finished()
    if jax.process_index() == 0:
      integrity.write_manifest(self.step_dir(step))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"visregion_jax checkpoint {step} checksummed")
    self._rotate()

  def _rotate(self) -> None:
    steps = self.all_steps()
    intact = [s for s in steps if integrity.has_manifest(self.step_dir(s))]
    if not intact:
      return
    kept = set(intact[-self.keep:]) | {s for s in intact if self.keep_every and s % self.keep_every == 0}
    for step in steps:
      if step < intact[-1] and step not in kept:
        self.manager.delete(step)

  def restore(self, step: int, trainable, opt_state) -> tuple:
    """(trainable, opt_state, meta) of `step`, placed like the given trees."""
    try:
      with _quiet_orbax():
        out = self.manager.restore(step, args=ocp.args.Composite(
            trainable=ocp.args.StandardRestore(abstract_of(trainable)),
            opt_state=ocp.args.StandardRestore(abstract_of(opt_state)),
            meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for missing / mismatched / corrupt data
      raise VisRegionError(self.step_dir(step), f"expected a checkpoint of this config ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    return unflat_like(trainable, out.trainable), unflat_like(opt_state, out.opt_state), out.meta

  def restore_trainable(self, step: int, trainable):
    """Only the trainable parameters of `step` (export needs nothing else)."""
    try:
      with _quiet_orbax():
        out = self.manager.restore(step, args=ocp.args.Composite(
            trainable=ocp.args.StandardRestore(abstract_of(trainable))))
    except Exception as e:  # orbax raises many types for missing / mismatched / corrupt data
      raise VisRegionError(self.step_dir(step), f"expected a checkpoint of this config ({type(e).__name__})") from None
    return unflat_like(trainable, out.trainable)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _warn(line: str) -> None:
  if jax.process_index() == 0:
    print(line, file=sys.stderr, flush=True)

