"""Evaluating one model on the configured benchmarks: answer (runner.py), score
(scoring/), report (results.py).

`evaluate_model` is what training, pruning's report and the `evaluate` command share:
it takes a model already placed (on the mesh, when there is one). `claim` keeps one
folder of predictions to one model and one set of answer-changing settings, so a rerun
continues only its own predictions.
"""

import json
import os
import time

import jax

from visregion_jax.benchmarks import results as results_file
from visregion_jax.benchmarks import settings
from visregion_jax.benchmarks.runner import Setup, TaskRun
from visregion_jax.benchmarks.scoring import score
from visregion_jax.benchmarks.scoring.predictions import read_predictions
from visregion_jax.console import log_line
from visregion_jax.errors import VisRegionError
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


def benchmark_metrics(config, model, tokenizer, data_config, out_dir: str, name: str, mesh=None) -> dict:
  """The configured benchmarks (`eval.tasks`; {} when none) of `model`, answered into
  `out_dir` for the model called `name` there: {"task/metric": value} (process 0; {}
  on the others). Training, pruning and the region study report these."""
  names = settings.task_names(config)
  if not names:
    return {}
  claim(out_dir, identity(name, config))
  setup = model_setup(config, model, tokenizer, mesh, data_config.image, data_config.pad_to_square)
  found = evaluate_model(model, setup, settings.open_tasks(config, names), out_dir)
  return {f"{task}/{metric}": value for task, r in found.items() for metric, value in r["metrics"].items()}
