"""One pass over a resolved training config before anything expensive runs.

Types and ranges of every key, files and directories that must exist, the workdir,
the region against the model's depth (read from config.json or GGUF metadata, no
weights), the mesh against the devices and the batch against the mesh and the
accumulation: each problem is one `VisRegionError` naming the key, in seconds, before
data synthesis, tower pretraining, weight loading or compilation. A config's hook may
declare keys whose paths it creates (`provides(config)`); those need not exist yet.
"""

import math
import os

import jax

from visregion_jax import model_spec, region, sharding
from visregion_jax.benchmarks import settings as benchmark_settings
from visregion_jax.convert.gguf_file import resolve_model_path
from visregion_jax.convert.gguf_metadata import block_count
from visregion_jax.data.templates import TEMPLATES
from visregion_jax.errors import VisRegionError
from visregion_jax.models.attention import check_choice
from visregion_jax.models.projector import projector_depth
from visregion_jax.models.vision import FEATURE_STRATEGIES
from visregion_jax.plan import TrainingPlan
from visregion_jax.train.batching import check_batch

DTYPES = ("", "float32", "bfloat16", "float16")
INT, NUMBER = "an integer", "a number"

# (key, kind, lowest, highest, lowest included): numbers a run reads.
RANGES = (
    ("seed", INT, 0, None, True),
    ("train.steps", INT, 1, None, True),
    ("train.batch_size", INT, 1, None, True),
    ("train.grad_accum", INT, 1, None, True),
    ("train.lr", NUMBER, 0, None, True),
    ("train.projector_lr", NUMBER, 0, None, True),
    ("train.vision_lr", NUMBER, 0, None, True),
    ("train.weight_decay", NUMBER, 0, None, True),
    ("train.warmup_ratio", NUMBER, 0, 1, True),
    ("train.max_grad_norm", NUMBER, 0, None, False),
    ("train.log_every", INT, 1, None, True),
    ("train.checkpoint_every", INT, 1, None, True),
    ("train.keep_checkpoints", INT, 1, None, True),
    ("train.keep_every", INT, 0, None, True),
    ("train.max_bad_steps", INT, 1, None, True),
    ("data.max_length", INT, 2, None, True),
    ("data.max_images_per_sample", INT, 0, None, True),
    ("data.num_workers", INT, 0, None, True),
    ("data.max_images_per_row", INT, 0, None, True),
    ("data.pack_window", INT, 1, None, True),
    ("train.prefetch", INT, 0, None, True),
    ("region.lora_rank", INT, 0, None, True),
    ("model.loss_tiles", INT, 0, None, True),
    ("region.probe_samples", INT, 1, None, True),
    ("region.lora_alpha", NUMBER, 0, None, False),
    ("region.lora_dropout", NUMBER, 0, 1, True),
    ("eval.every", INT, 0, None, True),
    ("eval.num_samples", INT, 1, None, True),
    ("eval.max_new_tokens", INT, 1, None, True),
)


def _get(config, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def check_number(key: str, value, kind: str, low, high, low_included: bool) -> None:
  """`value` is of `kind` and lies in its range (`high` excluded for numbers, included
  for integers)."""
  is_int = isinstance(value, int) and not isinstance(value, bool)
  ok = is_int if kind == INT else is_int or (isinstance(value, float) and math.isfinite(value))
  if ok and low is not None:
    ok = value >= low if low_included else value > low
  if ok and high is not None:
    ok = value < high if kind == NUMBER else value <= high
  if not ok:
    bounds = f"{'>=' if low_included else '>'} {low}" + (f" and < {high}" if high is not None else "")
    raise VisRegionError(key, f"expected {kind} {bounds}, got {value!r}")


def check_choices(config) -> None:
  d, m = config.data, config.model
  if d.template not in (*TEMPLATES, "tokenizer"):
    raise VisRegionError("data.template", f"expected one of {[*TEMPLATES, 'tokenizer']}, got {d.template!r}")
  bad = [b for b in d.buckets if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= d.max_length]
  if bad:
    raise VisRegionError("data.buckets", f"expected lengths in [1, data.max_length={d.max_length}], got {bad}")
  if not isinstance(d.packing, bool):
    raise VisRegionError("data.packing", f"expected True or False, got {d.packing!r}")
  if d.packing and d.max_images_per_row < d.max_images_per_sample:
    raise VisRegionError("data.max_images_per_row", f"expected at least data.max_images_per_sample="
                         f"{d.max_images_per_sample} (a sample's images share its row), got {d.max_images_per_row}")
  if d.packing and d.buckets:
    raise VisRegionError("data.buckets", "expected () with data.packing: packed rows are data.max_length long")
  if d.num_epochs is not None and (not isinstance(d.num_epochs, int) or d.num_epochs < 1):
    raise VisRegionError("data.num_epochs", f"expected None or a positive integer, got {d.num_epochs!r}")
  profile, steps = tuple(config.train.profile_steps), config.train.steps
  if profile and (len(profile) != 2 or any(isinstance(i, bool) or not isinstance(i, int) for i in profile)
                  or not 1 <= profile[0] <= profile[1] <= steps):
    raise VisRegionError("train.profile_steps", f"expected () or (first, last) with 1 <= first <= last <= "
                         f"train.steps={steps}, got {profile!r}")
  if m.dtype not in DTYPES:
    raise VisRegionError("model.dtype", f"expected one of {list(DTYPES)}, got {m.dtype!r}")
  check_choice(m.attention, m.attention_interpret)
  if m.feature_strategy not in FEATURE_STRATEGIES:
    raise VisRegionError("model.feature_strategy", f"expected one of {list(FEATURE_STRATEGIES)}, "
                         f"got {m.feature_strategy!r}")
  try:
    projector_depth(m.projector_type)
  except VisRegionError:
    raise VisRegionError("model.projector_type", f"expected linear or mlpNx_gelu, got {m.projector_type!r}") from None


def check_paths(config, provided: set) -> None:
  """Inputs that must exist (a path the hook provides need not, but must not be of the
  wrong kind) and a usable workdir."""
  d, m = config.data, config.model
  files = [("data.train_json", d.train_json, not d.tfds_dir), ("data.eval_json", d.eval_json, False),
           ("data.text_eval_json", d.text_eval_json, False)]
  for key, path, required in files:
    if not (path or required):
      continue
    if not path:
      raise VisRegionError(key, "expected the training data (LLaVA-format JSON), or set data.tfds_dir")
    if os.path.isdir(path) or (key not in provided and not os.path.isfile(path)):
      raise VisRegionError(key, f"expected an existing file, got {path!r}")
  for key, path in (("data.image_root", d.image_root), ("data.tfds_dir", d.tfds_dir),
                    ("model.vision_tower", m.vision_tower)):
    if path and (os.path.isfile(path) or (key not in provided and not os.path.isdir(path))):
      raise VisRegionError(key, f"expected an existing directory, got {path!r}")
  if not m.init_from or not os.path.exists(resolve_model_path(m.init_from)):
    raise VisRegionError("model.init_from", "expected a model: an llava-hf or decoder directory, a .gguf "
                         f"file or smollm2-135m-instruct, got {m.init_from!r}")
  check_workdir(config.workdir)


def check_workdir(workdir: str) -> None:
  if not workdir:
    raise VisRegionError("workdir", "expected a directory path")
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise VisRegionError("workdir", f"expected a directory, found a file: {path}")
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise VisRegionError("workdir", f"expected a directory path, but {existing} is a file")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise VisRegionError("workdir", f"expected a writable directory, {existing} is not writable")


def model_depth(config, provided: set) -> int:
  """Decoder layers of the model `model.init_from` names, from its config alone (a GGUF
  file's header, or config.json)."""
  m = config.model
  path = resolve_model_path(m.init_from)
  if path.endswith(".gguf") and os.path.isfile(path):
    return block_count(path)
  where, spec = model_spec.describe(config) if "model.vision_tower" not in provided else \
      model_spec.describe(_without_tower(config))
  if "llava" in spec:
    return int(spec["llava"]["text_config"]["num_hidden_layers"])
  try:
    return int(spec["decoder"]["num_hidden_layers"])
  except (KeyError, TypeError, ValueError):
    raise VisRegionError(where, f"expected num_hidden_layers in the model config ({m.init_from})") from None


def _without_tower(config):
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.vision_tower = ""
  return config


def check_settings(config) -> None:
  """Every number and choice of `config`, the mesh against the devices and the batch
  against the mesh: all validate() checks but files and the model (pruning's healing
  checks these before its model exists)."""
  for key, kind, low, high, low_included in RANGES:
    check_number(key, _get(config, key), kind, low, high, low_included)
  check_choices(config)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  check_batch(config.train, mesh)
  if jax.process_count() > 1 and config.train.batch_size % jax.process_count():
    raise VisRegionError("train.batch_size", f"expected a multiple of the process count {jax.process_count()}")


def validate(config, provided=()) -> None:
  """Raises VisRegionError at the first problem of `config` (see the module docstring).
  A multi-process job is joined first, so the mesh is checked against all devices."""
  sharding.maybe_initialize_distributed(config.get("distributed", False))
  provided = set(provided)
  check_settings(config)
  check_paths(config, provided)
  names = benchmark_settings.check(config, provided)
  benchmark_settings.open_tasks(config, [n for n in names if f"eval.data.{n}" not in provided])
  depth = model_depth(config, provided)
  if depth > 0:
    TrainingPlan.from_config(config, depth, scored_stand_in(config, depth))


def scored_stand_in(config, depth: int):
  """For `scored`, region layers of the right number to check (and size) the plan with,
  until the probe picks them when the model is built; None for the other strategies."""
  r = config.region
  if r.strategy != "scored":
    return None
  if not isinstance(r.scored_halves, bool):
    raise VisRegionError("region.scored_halves", f"expected True or False, got {r.scored_halves!r}")
  m = config.model
  if not m.vision_tower and "llava" not in model_spec.describe(config)[1]:
    raise VisRegionError("region.strategy", "expected a vision-language model for scored (it probes image "
                         "tokens): an llava-hf model.init_from or a model.vision_tower")
  return tuple(range(region.region_size(depth, r.fraction)))

