"""`python -m visregion_jax.evaluate score --task TASK --predictions FILE.jsonl` as a user runs it:
one JSON object of lmms-eval's metric names on stdout and exit 0, or one `error:` line and
exit 2 for a missing file, a line that is not a JSON object, an unknown task, a missing field.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import run_command_here

from visregion_jax.benchmarks.scoring import TASKS
from visregion_jax.evaluate.__main__ import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One file of right answers per task, and the metrics it must print.
RIGHT = {
  "gqa": ([{"question": "?", "answer": "yes", "prediction": "Yes"}], {"exact_match": 1.0}),
  "textvqa_val": ([{"question_id": 1, "answers": ["two"] * 10, "prediction": "2"}], {"exact_match": 1.0}),
  "vqav2_val": ([{"question_id": 1, "answers": [{"answer": "yes", "answer_id": i} for i in range(10)],
                  "prediction": "yes"}], {"exact_match": 1.0}),
  "pope": ([{"question_id": "1", "answer": "yes", "prediction": "yes"}],
           {"pope_accuracy": 1.0, "pope_precision": 1.0, "pope_recall": 1.0, "pope_f1_score": 1.0,
            "pope_yes_ratio": 1.0, "pope_llava_accuracy": 1.0, "pope_llava_precision": 1.0, "pope_llava_recall": 1.0,
            "pope_llava_f1_score": 1.0, "pope_llava_yes_ratio": 1.0}),
  "mme": ([{"question_id": "count/1.png", "category": "count", "answer": a, "prediction": a} for a in ("Yes", "No")],
          {"mme_perception_score": 200.0}),
  "scienceqa_img": ([{"choices": ["a", "b"], "answer": 1, "prediction": "B"}], {"exact_match": 1.0}),
  "seedbench": ([{"answer": "A", "data_type": "image", "prediction": "A"}], {"seed_image": 1.0, "seed_all": 1.0}),
  "mmbench_en_dev": ([{"index": 0, "answer": "A", "A": "x", "B": "y", "C": None, "D": None, "prediction": "A"}],
                     {"gpt_eval_score": 100.0}),
  "mmmu_val": ([{"id": "validation_Art_1", "question_type": "multiple-choice", "options": "['x', 'y']",
                 "answer": "A", "prediction": "(A)"}], {"mmmu_acc": 1.0}),
  "mmlu": ([{"subject": "anatomy", "answer": 0, "prediction": "A"}], {"acc": 1.0, "mmlu_anatomy/acc": 1.0}),
}


def run(*argv) -> subprocess.CompletedProcess:
  return run_command_here(main, argv)  # test_python_dash_m runs it as a user does


def write(path, rows) -> str:
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
  return str(path)


def test_every_task_has_a_case():
  assert RIGHT.keys() == TASKS.keys()


@pytest.mark.parametrize("task", RIGHT)
def test_prints_one_json_object(task, tmp_path):
  rows, metrics = RIGHT[task]
  done = run("score", "--task", task, "--predictions", write(tmp_path / f"{task}.jsonl", rows))
  assert done.returncode == 0, done.stderr
  assert done.stdout.count("\n") == 1 and json.loads(done.stdout) == metrics


def test_python_dash_m(tmp_path):
  rows, metrics = RIGHT["pope"]
  done = subprocess.run([sys.executable, "-m", "visregion_jax.evaluate", "score", "--task", "pope", "--predictions",
                         write(tmp_path / "pope.jsonl", rows)], cwd=REPO, capture_output=True, text=True, timeout=120,
                        check=False)
  assert done.returncode == 0 and json.loads(done.stdout) == metrics, done.stderr
  done = subprocess.run([sys.executable, "-m", "visregion_jax.evaluate", "rescore"], cwd=REPO, capture_output=True,
                        text=True, timeout=120, check=False)
  assert done.returncode == 2 and done.stderr.startswith("error: python -m visregion_jax.evaluate"), done.stderr


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path):
  path = tmp_path / "pope.jsonl"
  path.write_text('{"answer": "yes", "prediction": "yes"}\n\n{"answer": "no"}\n', encoding="utf-8")
  done = run("score", "--task", "pope", "--predictions", str(path))
  assert done.returncode == 2 and done.stderr == f"error: {path}:3: expected field 'prediction' (the model's answer)\n"


@pytest.mark.parametrize("case, content, message", [
  ("missing file", None, "{path}: No such file or directory"),
  ("not JSON", '{"answer": "yes", "prediction": "yes"}\n{"answer": yes}\n', "{path}:2: expected one JSON object per line"),
  ("not an object", '["yes", "yes"]\n', "{path}:1: expected a JSON object, got list"),
  ("empty", "\n", "{path}: expected at least one JSON line"),
  ("missing field", '{"prediction": "yes"}\n', "{path}:1: expected field 'answer'"),
  ("wrong type", '{"answer": 1, "prediction": "yes"}\n', "{path}:1: expected field 'answer' to be a string"),
  ("not yes or no", '{"answer": "maybe", "prediction": "yes"}\n', "{path}:1: expected field 'answer' to be yes or no"),
  ("not UTF-8", b"\xff\xfe{}\n", "{path}: expected UTF-8 text"),
])
def test_bad_predictions_are_one_error_line(case, content, message, tmp_path):
  path = tmp_path / "predictions.jsonl"
  if isinstance(content, bytes):
    path.write_bytes(content)
  elif content is not None:
    path.write_text(content, encoding="utf-8")
  done = run("score", "--task", "pope", "--predictions", str(path))
  assert done.returncode == 2 and done.stdout == "", case
  assert done.stderr.startswith("error: " + message.format(path=path)) and done.stderr.count("\n") == 1, done.stderr


def test_unknown_task_names_the_known_ones_before_reading(tmp_path):
  done = run("score", "--task", "vqav3", "--predictions", str(tmp_path / "never-read.jsonl"))
  assert done.returncode == 2 and done.stderr.count("\n") == 1
  assert done.stderr.startswith("error: --task: expected one of gqa, textvqa_val") and "'vqav3'" in done.stderr


@pytest.mark.parametrize("argv", [[], ["score"], ["score", "--task", "pope"], ["rescore"]])
def test_bad_command_lines_are_usage_errors(argv):
  done = run(*argv)
  assert done.returncode == 2 and done.stderr.startswith("error: python -m visregion_jax.evaluate")
  assert done.stderr.count("\n") == 1
