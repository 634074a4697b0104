"""The prune command's checks, before any weight is loaded.

Every `prune.*` key, the layers to remove and to heal against the model's depth (read
from its config.json, a GGUF header, a JAX checkpoint's model config or a training
run's config, never from weights) and the region, and, with healing, the training
settings healing reuses: each mistake is one `VisRegionError` naming the key, in
seconds, before the model, the data or the compiler are touched.
"""

import dataclasses
import os

import ml_collections

from visregion_jax import region
from visregion_jax.benchmarks import settings as benchmark_settings
from visregion_jax.convert import jax_checkpoint
from visregion_jax.convert.gguf_file import resolve_model_path
from visregion_jax.convert.tensor_files import read_json_object
from visregion_jax.errors import VisRegionError
from visregion_jax.layer_influence import METRICS, TOKEN_SUBSETS
from visregion_jax.models.lvlm import LVLMConfig
from visregion_jax.prune.heal import heal_config, heal_spec
from visregion_jax.prune.selection import choose_layers, read_scores
from visregion_jax.train.trained import is_training_workdir
from visregion_jax.train.validate import INT, NUMBER, check_number, check_paths, check_settings, model_depth

# (key, kind, lowest, highest, lowest included), as train/validate.py's RANGES.
RANGES = (
    ("prune.k", INT, 0, None, True),
    ("prune.block_size", INT, 1, None, True),
    ("prune.calibration_samples", INT, 1, None, True),
    ("prune.batch_size", INT, 1, None, True),
    ("prune.latency_runs", INT, 2, None, True),
    ("prune.heal_steps", INT, 0, None, True),
    ("prune.heal_lora_rank", INT, 0, None, True),
    ("prune.heal_lora_alpha", NUMBER, 0, None, False),
    ("prune.heal_lr", NUMBER, 0, None, True),
)
MODEL_KINDS = "an HF directory, a .gguf file, a JAX model checkpoint or a training workdir"


@dataclasses.dataclass(frozen=True)
class Checked:
  """What the checks established: the model to prune, its depth and region, the block
  size scores use, the layers given to remove (empty: chosen by score), how many go,
  the heal layers' spec (None: no healing) and the scores of `prune.scores_json`
  (None: scored afresh)."""
  model_dir: str
  num_layers: int
  region: tuple
  block: int
  layers: tuple
  num_removed: int
  heal: object
  scores: list


def model_dir_of(config, workdir: str) -> str:
  if config.prune.model:
    return config.prune.model
  path = os.path.join(workdir, "hf")
  if not os.path.isdir(path):
    raise VisRegionError(path, "expected the training run's HF export (train.export_hf), or set prune.model")
  return path


def model_depth_of(path: str) -> int:
  """Decoder layers of the model at `path`, from its configuration alone."""
  if is_training_workdir(path):
    return model_depth(ml_collections.ConfigDict(read_json_object(os.path.join(path, "config.json"))), ())
  if jax_checkpoint.is_model_checkpoint(path):
    where = os.path.join(path, jax_checkpoint.MODEL_CONFIG)
    config = jax_checkpoint.config_from_json(read_json_object(where), where)
    return config.text.num_layers if isinstance(config, LVLMConfig) else config.num_layers
  resolved = resolve_model_path(path)
  if not os.path.exists(resolved):
    raise VisRegionError("prune.model", f"expected {MODEL_KINDS}: {path!r}: no such file or directory")
  if os.path.isdir(resolved) and not os.path.isfile(os.path.join(resolved, "config.json")):
    raise VisRegionError(resolved, f"expected {MODEL_KINDS} (no config.json)")
  return model_depth(ml_collections.ConfigDict({"model": {"init_from": path, "vision_tower": ""}}), ())


def region_of(config, workdir: str, num_layers: int) -> tuple:
  path = os.path.join(workdir, "region.json")
  if not os.path.isfile(path):
    r = config.region
    return region.select_layers(num_layers, r.fraction, r.strategy, list(r.get("layers") or ()))
  saved = read_json_object(path)
  if saved.get("num_layers") != num_layers:
    raise VisRegionError(path, f"expected the region of a {num_layers}-layer model (the model to prune), "
                         f"got one of {saved.get('num_layers')} layers")
  layers = saved.get("region_layers")
  if not isinstance(layers, list) or any(not isinstance(i, int) or not 0 <= i < num_layers for i in layers):
    raise VisRegionError(f"{path}: region_layers", f"expected a list of layer indices in [0, {num_layers})")
  return tuple(layers)


def block_size_of(p, num_layers: int) -> int:
  """Layers per scored block: prune.k for contiguous selection, else prune.block_size."""
  if not p.contiguous:
    if not 1 <= p.block_size <= num_layers:
      raise VisRegionError("prune.block_size", f"expected 1..{num_layers}, got {p.block_size}")
    return p.block_size
  if not 0 < p.k < num_layers:
    raise VisRegionError("prune.k", f"expected 0 < k < {num_layers} (the model's layers), got {p.k}")
  if p.block_size not in (1, p.k):
    raise VisRegionError("prune.block_size", f"expected 1 or prune.k={p.k} with prune.contiguous "
                         f"(blocks of k layers are scored), got {p.block_size}")
  return p.k


def given_layers(p, num_layers: int, region_layers) -> tuple:
  """`prune.layers`, checked: distinct indices of the unpruned model, at least one layer
  kept, none of the region unless `prune.allow_region`."""
  layers = tuple(p.layers)
  if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers for i in layers) \
      or len(set(layers)) != len(layers) or len(layers) >= num_layers:
    raise VisRegionError("prune.layers", f"expected distinct layer indices in [0, {num_layers}) leaving at "
                         f"least one layer, got {layers!r}")
  inside = sorted(set(layers) & set(region_layers))
  if inside and not p.allow_region:
    raise VisRegionError("prune.layers", f"expected layers outside the visual region {list(region_layers)} "
                         f"(or prune.allow_region=True), got {list(layers)} (region layers {inside})")
  for key in ("contiguous", "iterative"):
    if p[key]:
      raise VisRegionError(f"prune.{key}", "expected False with prune.layers (the layers given are removed)")
  return tuple(sorted(layers))


def check_heal(config, workdir: str, num_after: int):
  """The heal layers' spec (None without healing), and the training settings healing
  reuses, as `train` checks them."""
  p = config.prune
  spec = heal_spec(p.heal_layers)
  if p.heal_steps == 0:
    return None
  if isinstance(spec, tuple) and not all(0 <= i < num_after for i in spec):
    raise VisRegionError("prune.heal_layers", f"expected layer indices of the pruned model, in [0, {num_after}), "
                         f"got {list(spec)}")
  # The model to prune stands for the pruned export to come (it exists; its depth is known).
  preview = heal_config(config, os.path.join(workdir, "prune", "heal"), (0,), model_dir_of(config, workdir),
                        is_lvlm=False)
  check_settings(preview)
  check_paths(preview, set())
  return spec


def check(config, workdir: str) -> Checked:
  """Raises VisRegionError at the first problem (see the module docstring)."""
  p = config.prune
  for key, kind, low, high, low_included in RANGES:
    check_number(key, p[key.split(".")[1]], kind, low, high, low_included)
  for key, choices in (("metric", METRICS), ("tokens", TOKEN_SUBSETS)):
    if p[key] not in choices:
      raise VisRegionError(f"prune.{key}", f"expected one of {list(choices)}, got {p[key]!r}")
  for key in ("iterative", "contiguous", "allow_region"):
    if not isinstance(p[key], bool):
      raise VisRegionError(f"prune.{key}", f"expected True or False, got {p[key]!r}")
  model_dir = model_dir_of(config, workdir)
  num_layers = model_depth_of(model_dir)
  region_layers = region_of(config, workdir, num_layers)
  block = block_size_of(p, num_layers)
  layers = given_layers(p, num_layers, region_layers) if p.layers else ()
  if not layers:
    if p.iterative and (p.contiguous or block != 1):
      raise VisRegionError("prune.iterative", "expected prune.contiguous=False and prune.block_size=1 "
                           "(one layer is removed per round)")
    choose_layers([0.0] * (num_layers - block + 1) + [None] * (block - 1), p.k, region_layers,
                  contiguous=p.contiguous, allow_region=p.allow_region)  # does k fit?
  scores = read_scores(p.scores_json, num_layers, block, p.metric) if p.get("scores_json") else None
  benchmark_settings.open_tasks(config, benchmark_settings.check(config))  # the report's benchmarks
  num_removed = len(layers) or p.k
  return Checked(model_dir=model_dir, num_layers=num_layers, region=region_layers, block=block, layers=layers,
                 num_removed=num_removed, heal=check_heal(config, workdir, num_layers - num_removed),
                 scores=scores)
