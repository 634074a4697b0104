"""The benchmark keys of a config (`eval.tasks`, `eval.data.<task>`, ...), checked up front.

Training, pruning and `python -m visregion_jax.evaluate` all call `check` before any
model is loaded, and `open_tasks` before the model too: a misspelt task, a folder that
is not there, a parquet file without a column the task reads is one `error:` line, not
a failure an hour into an evaluation.
"""

from visregion_jax import sharding
from visregion_jax.benchmarks import prompts, tasks
from visregion_jax.benchmarks.readers import open_task
from visregion_jax.errors import VisRegionError


def task_names(config) -> tuple:
  """`eval.tasks` as names (a comma-separated string or a tuple), each one known."""
  value = config.eval.tasks
  names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value)
  names = [n for n in names if n]
  for name in names:
    tasks.task(name)
  if len(set(names)) != len(names):
    raise VisRegionError("eval.tasks", f"expected each task once, got {value!r}")
  return tuple(names)


def check(config, provided=()) -> tuple:
  """The tasks to evaluate, after checking every benchmark key; folders the config's
  hook writes (`provided`) need not exist yet."""
  e = config.eval
  names = task_names(config)
  if not names:
    return names
  if e.prompt_style not in prompts.STYLES:
    raise VisRegionError("eval.prompt_style", f"expected one of {', '.join(prompts.STYLES)}, got {e.prompt_style!r}")
  for key, low in (("batch_size", 1), ("limit", 0)):
    value = e[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise VisRegionError(f"eval.{key}", f"expected an integer >= {low}, got {value!r}")
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  rows = mesh.shape["data"] * mesh.shape["fsdp"]
  if e.batch_size % rows:
    raise VisRegionError("eval.batch_size", f"expected a multiple of mesh.data x mesh.fsdp = {rows} (the rows "
                         f"are split over them), got {e.batch_size}")
  for name in names:
    if not e.data.get(name) and f"eval.data.{name}" not in provided:
      raise VisRegionError(f"eval.data.{name}", "expected the folder of its published files (docs/evaluation.md)")
  return names


def open_tasks(config, names) -> dict:
  """Each task opened from its folder (files, columns and answer joins checked)."""
  return {name: open_task(name, config.eval.data[name]) for name in names}
