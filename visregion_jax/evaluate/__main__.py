"""`python -m visregion_jax.evaluate score --task TASK --predictions FILE.jsonl`: the task's
metrics over saved predictions, as one JSON object on stdout, equal to lmms-eval's scoring
(visregion_jax.benchmarks.scoring says how and where ours-only metrics are added)."""

import json
import sys

from visregion_jax import cli
from visregion_jax.benchmarks.scoring import TASKS, check_task, score
from visregion_jax.benchmarks.scoring.predictions import read_predictions


def score_file(task: str, path: str) -> None:
  """Checks the task before reading the file, then prints the metrics as one JSON line."""
  check_task(task)
  rows, where = read_predictions(path)
  print(json.dumps(score(task, rows, where)))


def main(argv=None) -> int:
  parser = cli.ArgumentParser(prog="python -m visregion_jax.evaluate",
                              description="Evaluate a model on the paper's benchmarks, scored as lmms-eval scores them.")
  # The generating form, `--config FILE.py [--config.KEY=VALUE ...]`, is added here beside `score`.
  sub = parser.add_subparsers(dest="command", required=True)
  rescore = sub.add_parser("score", help="score saved predictions without generating: prints the metrics as JSON",
                           description="Score a predictions file (one JSON object per line: the benchmark row's "
                           "fields as its dataset names them plus `prediction`, the model's raw answer) and print "
                           "the task's metrics, named and scaled as lmms-eval reports them, as one JSON object.")
  rescore.add_argument("--task", required=True, help=f"the lmms-eval task: {', '.join(TASKS)}")
  rescore.add_argument("--predictions", required=True, help="the .jsonl file, e.g. WORKDIR/eval/<task>.jsonl")
  args = parser.parse_args(argv)
  return cli.run_main(lambda: score_file(args.task, args.predictions))


if __name__ == "__main__":
  sys.exit(main())
