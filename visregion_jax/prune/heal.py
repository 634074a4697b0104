"""Healing: a short training of the pruned model after removal, by the library's own
training loop (train/loop.py), as the pruning literature recovers accuracy (Shortened
LLaMA, LLM-Streamline, Gromov et al.).

The pruned model, exported to WORKDIR/prune/pruned, becomes `model.init_from` of a
training config derived from the prune config (heal_config) whose workdir is
WORKDIR/prune/heal: checkpoints, metrics.jsonl, TensorBoard, the resume after a kill
and the checkpoint at a SIGTERM / SIGINT are those of `python -m visregion_jax.train`,
so a rerun of the prune command resumes healing exactly where it stopped. Healing
trains the heal layers alone (the projector stays frozen), fully or with LoRA (merged
in the export), at `prune.heal_lr`, on the training data with the training run's
batch, schedule shape and checkpoint interval (`train.*`).
"""

import ast
import time

from visregion_jax import prune
from visregion_jax.errors import VisRegionError
from visregion_jax.train import loop

CHOICES = ("region", "neighbours")


def heal_spec(value):
  """`prune.heal_layers` as "region", "neighbours" or a tuple of pruned-model indices
  (a config file or the command line gives those as text, such as "(0,2)")."""
  if value in CHOICES:
    return value
  try:
    parsed = ast.literal_eval(value) if isinstance(value, str) else value
  except (ValueError, SyntaxError):
    parsed = None
  parsed = (parsed,) if isinstance(parsed, int) else parsed
  if (not isinstance(parsed, (tuple, list)) or not parsed
      or any(isinstance(i, bool) or not isinstance(i, int) for i in parsed)):
    raise VisRegionError("prune.heal_layers", f"expected one of {list(CHOICES)} or a tuple of layer indices "
                         f"of the pruned model such as (0,2), got {value!r}")
  return tuple(sorted(set(parsed)))


def neighbours(removed, num_layers: int) -> tuple:
  """The kept layers next to each removed one (the nearest below and above), in the
  pruned model's indices: the layers whose input or output the removal changed most."""
  kept = [i for i in range(num_layers) if i not in set(removed)]
  near = set()
  for r in removed:
    near.update([i for i in kept if i < r][-1:] + [i for i in kept if i > r][:1])
  return prune.remap_layers(sorted(near), removed)


def heal_layers(spec, region_layers, removed, num_layers: int) -> tuple:
  """The pruned model's layers healing trains."""
  if spec == "neighbours":
    return neighbours(removed, num_layers)
  if spec != "region":
    return spec
  layers = prune.remap_layers(region_layers, removed)
  if not layers:
    raise VisRegionError("prune.heal_layers", f"expected region layers to heal, but the region "
                         f"{list(region_layers)} was removed whole; name the layers instead")
  return layers


def heal_config(config, workdir: str, layers, pruned_dir: str, is_lvlm: bool):
  """The training config of healing: the prune config with the pruned model, the heal
  layers as an explicit region, the heal settings, its own workdir and no evaluation or
  hook (the prune report measures)."""
  p = config.prune
  c = config.copy_and_resolve_references()
  c.workdir = workdir
  c.hook = ""
  c.dry_run = False
  c.model.init_from = pruned_dir
  c.model.vision_tower = pruned_dir if is_lvlm else ""  # an LVLM's image processor comes from here
  c.region.strategy = "explicit"
  c.region.layers = tuple(layers)
  c.region.lora_rank = p.heal_lora_rank
  c.region.lora_alpha = float(p.heal_lora_alpha)
  c.region.train_projector = False
  c.region.train_vision = False
  c.train.steps = p.heal_steps
  c.train.lr = float(p.heal_lr)
  c.train.export_hf = True
  c.train.profile_steps = ()
  c.eval.every = 0
  c.eval.at_start = False
  c.eval.at_end = False
  return c


def heal(config, workdir: str, layers, pruned_dir: str, is_lvlm: bool) -> dict:
  """Trains (or resumes training) the pruned model; returns where its export is and
  what healing cost in this run. Raises Interrupted after a checkpoint on a signal."""
  started = time.time()
  results = loop.run(heal_config(config, workdir, layers, pruned_dir, is_lvlm))
  times = results["step_times_s"]
  return {"hf_dir": results["hf_dir"], "seconds": time.time() - started, "steps_run": len(times),
          "train_seconds": sum(times), "trainable_params": results["trainable_params"]}
