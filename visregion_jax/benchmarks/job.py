"""Evaluating one model on the configured benchmarks: answer (runner.py), score
(scoring/), report (results.py).

`evaluate_model` is what training's end, pruning's report and the `evaluate` command
share: it takes a model already on the mesh. `run` is the command's whole job: check the
keys, open every task (files and columns checked), look at the model's config, and only
then load the weights.
"""

import json
import os
import time

import jax

from visregion_jax import sharding
from visregion_jax.benchmarks import results as results_file
from visregion_jax.benchmarks import settings
from visregion_jax.benchmarks.runner import Setup, TaskRun
from visregion_jax.benchmarks.scoring import score
from visregion_jax.benchmarks.scoring.predictions import read_predictions
from visregion_jax.console import log_line
from visregion_jax.convert import load_tokenizer
from visregion_jax.convert.processor import read_image_processor
from visregion_jax.errors import VisRegionError
from visregion_jax.loading import load_model, peek_model
from visregion_jax.models.lvlm import LVLM
from visregion_jax.publish import write_file_atomically


def identity(model: str, config) -> dict:
  """What a folder of predictions is of: the model and the settings that change answers."""
  e = config.eval
  return {"model": model, "prompt_style": e.prompt_style, "max_new_tokens": e.max_new_tokens,
          "dtype": config.model.get("dtype") or ""}


def model_setup(config, model, tokenizer, mesh, image_processor=None, pad_to_square=True) -> Setup:
  e = config.eval
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
  vision = {}
  if isinstance(model, LVLM):
    vision = dict(image_token_id=model.config.image_token_id, num_image_tokens=model.config.num_image_tokens,
                  image_processor=image_processor, pad_to_square=pad_to_square)
  return Setup(tokenizer=tokenizer, pad_token_id=int(pad or 0), batch_size=e.batch_size,
               max_new_tokens=e.max_new_tokens, style=e.prompt_style, limit=e.limit, mesh=mesh, **vision)


def claim(out_dir: str, identity: dict) -> None:
  """Marks `out_dir` as holding the predictions of `identity` (the model and the settings
  that change answers), or refuses to continue another model's predictions there."""
  path = os.path.join(out_dir, "run.json")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      held = json.load(f)
    if held != identity:
      raise VisRegionError(path, f"expected predictions of {identity}, the folder holds those of {held}; "
                           "remove it or use another workdir")
  elif jax.process_index() == 0:
    write_file_atomically(path, json.dumps(identity, indent=2))


def evaluate_model(model, setup: Setup, opened: dict, out_dir: str) -> dict:
  """Answers and scores every opened task into `out_dir` (<task>.jsonl, results.json,
  results.md); returns {task: {"metrics", "samples", "broken_images", "seconds"}}."""
  found = {}
  for name, data in opened.items():
    started = time.time()
    log_line(f"benchmark {name}: {len(data)} samples ({data.layout} files)")
    counts = TaskRun(model, data, setup, out_dir).run()
    path = os.path.join(out_dir, f"{name}.jsonl")
    metrics = {}
    if jax.process_index() == 0:
      rows, where = read_predictions(path)
      metrics = score(name, rows[:counts["samples"]], where[:counts["samples"]])
      log_line(f"benchmark {name}: {metrics}")
    found[name] = {"metrics": metrics, **counts, "seconds": round(time.time() - started, 1)}
  if jax.process_index() == 0:
    results_file.write(out_dir, found)
  return found


def run(config) -> dict:
  """`python -m visregion_jax.evaluate --config ...`: the configured tasks on `eval.model`."""
  sharding.maybe_initialize_distributed(config.get("distributed", False))
  names = settings.check(config)
  if not names:
    raise VisRegionError("eval.tasks", "expected at least one task, e.g. --config.eval.tasks=pope,gqa")
  source = config.eval.model or config.workdir
  if not os.path.exists(source):
    raise VisRegionError("eval.model", f"expected a model: an HF directory, a JAX checkpoint or a training "
                         f"workdir, got {source!r}")
  opened = settings.open_tasks(config, names)
  out_dir = os.path.join(os.path.abspath(config.workdir), "eval")
  claim(out_dir, identity(os.path.abspath(source), config))
  kind, _ = peek_model(source)
  if kind != "lvlm":
    pictured = [n for n in names if n != "mmlu"]
    if pictured:
      raise VisRegionError("eval.model", f"expected a vision-language model for {', '.join(pictured)}; "
                           f"{source} is a text decoder")
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  model = sharding.on_mesh(load_model(source, dtype=config.model.get("dtype") or None), mesh)
  tokenizer = load_tokenizer(model.config.source)
  vision = {}
  if isinstance(model, LVLM):
    image_processor, pad = read_image_processor(model.config.source)
    vision = dict(image_processor=image_processor, pad_to_square=pad)
  setup = model_setup(config, model, tokenizer, mesh, **vision)
  return evaluate_model(model, setup, opened, out_dir)
