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
import sys

from visregion_jax import cli
from visregion_jax.benchmarks import job
from visregion_jax.benchmarks.scoring import TASKS, check_task, score
from visregion_jax.benchmarks.scoring.predictions import read_predictions


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
  return cli.config_command("python -m visregion_jax.evaluate", __doc__, job.run, argv)


if __name__ == "__main__":
  sys.exit(main())
