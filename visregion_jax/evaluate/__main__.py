"""`python -m visregion_jax.evaluate --config configs/NAME.py [--config.eval.tasks=gqa,pope,...]
[--config.eval.model=HF_DIR_OR_WORKDIR] [--config.KEY=VALUE ...]`

Evaluates a model on the paper's benchmarks, read from local copies of their published
files (`eval.data.<task>`, docs/evaluation.md), prompted as LLaVA-1.5's evaluation
prompts them and scored as lmms-eval scores them. Writes WORKDIR/eval/<task>.jsonl (each
benchmark row's fields and the model's `prediction`; a rerun continues after the last
line), WORKDIR/eval/results.json and results.md. Runs sharded over the config's mesh
and over every process of a multi-process job.

`python -m visregion_jax.evaluate score --task TASK --predictions FILE.jsonl` scores saved
predictions without a model and prints the task's metrics as one JSON object.
"""

import json
import os
import sys

from visregion_jax import cli, sharding
from visregion_jax.benchmarks import job, settings
from visregion_jax.benchmarks.scoring import TASKS, check_task, score
from visregion_jax.benchmarks.scoring.predictions import read_predictions
from visregion_jax.convert import load_tokenizer
from visregion_jax.convert.processor import read_image_processor
from visregion_jax.errors import VisRegionError
from visregion_jax.loading import load_model, peek_model
from visregion_jax.models.lvlm import LVLM


def evaluate(config) -> dict:
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
  job.claim(out_dir, job.identity(os.path.abspath(source), config))
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
  setup = job.model_setup(config, model, tokenizer, mesh, **vision)
  return job.evaluate_model(model, setup, opened, out_dir)


def score_file(task: str, path: str) -> None:
  """Checks the task before reading the file, then prints the metrics as one JSON line."""
  check_task(task)
  rows, where = read_predictions(path)
  print(json.dumps(score(task, rows, where)))


def score_command(argv: list) -> int:
  parser = cli.ArgumentParser(
      prog="python -m visregion_jax.evaluate score",
      description="Score a predictions file (one JSON object per line: the benchmark row's fields as its dataset "
      "names them plus `prediction`, the model's raw answer) and print the task's metrics, named and scaled as "
      "lmms-eval reports them, as one JSON object.")
  parser.add_argument("--task", required=True, help=f"the lmms-eval task: {', '.join(TASKS)}")
  parser.add_argument("--predictions", required=True, help="the .jsonl file, e.g. WORKDIR/eval/<task>.jsonl")
  args = parser.parse_args(argv)
  return cli.run_main(lambda: score_file(args.task, args.predictions))


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["score"]:
    return score_command(argv[1:])
  return cli.config_command("python -m visregion_jax.evaluate", __doc__, evaluate, argv)


if __name__ == "__main__":
  sys.exit(main())
