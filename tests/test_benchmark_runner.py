"""`python -m visregion_jax.evaluate --config ...` on a tiny trained LLaVA export and
benchmark files written in their published schemas (POPE with a broken image, GQA with
its joined images, MMLU by log-likelihood): the predictions do not depend on the batch
size, the device count or the process count; a rerun continues an interrupted file; the
metrics are `evaluate score`'s; bad input is one `error:` line before any model loads.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import benchmark_files as files
import pytest
import train_fixtures
from conftest import run_command_here
from test_convert_errors import assert_one_error_line

from visregion_jax.config import load_config
from visregion_jax.demo.gqa_layout import write_gqa_layout
from visregion_jax.evaluate.__main__ import main as evaluate_main
from visregion_jax.prune.__main__ import main as prune_main
from visregion_jax.train import loop as train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("pope", "gqa", "mmlu")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  return train_fixtures.build_inputs(str(tmp_path_factory.mktemp("bench_inputs")))


@pytest.fixture(scope="module")
def synthetic_gqa(inputs, tmp_path_factory):
  """The fixture's held-out image questions in GQA's LLaVA layout (the demo writes its own so)."""
  return write_gqa_layout(os.path.join(inputs["data"], "eval.json"), inputs["data"],
                          str(tmp_path_factory.mktemp("synthetic") / "gqa"))


@pytest.fixture(scope="module")
def trained(inputs, synthetic_gqa, tmp_path_factory):
  """One training step that evaluates GQA at its end (eval.tasks), and exports."""
  workdir = str(tmp_path_factory.mktemp("bench_trained"))
  train.run(load_config(train_fixtures.overrides(inputs, workdir, **{
      "train.export_hf": "true", "train.steps": 1, "eval.at_end": "true", "eval.tasks": "gqa",
      "eval.data.gqa": synthetic_gqa, "eval.max_new_tokens": 4}), "test"))
  return workdir


@pytest.fixture(scope="module")
def export(trained):
  return os.path.join(trained, "hf")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """10 POPE rows (row 3's image broken), 10 GQA rows, 6 MMLU rows with their dev split."""
  root = tmp_path_factory.mktemp("benchmarks")
  pope = files.rows_of("pope", 10, answer=["yes", "no"] * 5)
  pope[3]["image"] = files.cell(b"not an image")
  files.publish(str(root / "pope"), "pope", pope)
  files.publish(str(root / "gqa"), "gqa", files.rows_of("gqa", 10))
  files.publish(str(root / "mmlu"), "mmlu", files.rows_of("mmlu", 6, subject=["anatomy"] * 6, answer=[0, 1, 2, 3, 0, 1]))
  return {task: str(root / task) for task in TASKS}


def argv(export, data, workdir, **extra) -> list:
  values = {"workdir": workdir, "eval.model": export, "eval.tasks": ",".join(TASKS), "eval.max_new_tokens": 4,
            **{f"eval.data.{t}": p for t, p in data.items()}, **extra}
  return ["--config", os.path.join(REPO, "configs", "tiny_test.py")] + [f"--config.{k}={v}" for k, v in values.items()]


def evaluate_here(args: list) -> subprocess.CompletedProcess:
  """The command in this test's process (one CPU device): the cases that need no fresh one."""
  return run_command_here(evaluate_main, args)


def evaluate(args: list, devices: int = 1, env=None, wait=True):
  """`python -m visregion_jax.evaluate` as a user runs it, on `devices` CPU devices."""
  run_env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                 **(env or {}))
  process = subprocess.Popen([sys.executable, "-m", "visregion_jax.evaluate", *args], cwd=REPO, env=run_env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  if not wait:
    return process
  out, err = process.communicate()
  return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def predictions(workdir: str, task: str) -> list:
  with open(os.path.join(workdir, "eval", f"{task}.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def one(export, data, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("eval_one"))
  done = evaluate(argv(export, data, workdir))
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir


def test_every_sample_answered_and_scored_as_evaluate_score_does(one):
  results = json.load(open(os.path.join(one, "eval", "results.json"), encoding="utf-8"))
  assert set(results) == set(TASKS)
  for task in TASKS:
    lines = predictions(one, task)
    assert len(lines) == results[task]["samples"] == {"pope": 10, "gqa": 10, "mmlu": 6}[task]
    rescored = run_command_here(evaluate_main, ["score", "--task", task,
                                                "--predictions", os.path.join(one, "eval", f"{task}.jsonl")])
    assert rescored.returncode == 0 and json.loads(rescored.stdout) == results[task]["metrics"], rescored.stderr
  assert [line["prediction"] for line in predictions(one, "mmlu")] and \
      {line["prediction"] for line in predictions(one, "mmlu")} <= set("ABCD")
  gqa = predictions(one, "gqa")
  assert gqa[0]["question"] == "question 0" and "imageId" in gqa[0]
  with open(os.path.join(one, "eval", "results.md"), encoding="utf-8") as f:
    table = f.read()
  assert "| pope | pope_f1_score |" in table and "| mmlu | acc |" in table


def test_a_broken_image_is_counted_and_scored_wrong(one):
  results = json.load(open(os.path.join(one, "eval", "results.json"), encoding="utf-8"))
  assert results["pope"]["broken_images"] == {"corrupt_image": 1}
  broken = predictions(one, "pope")[3]
  assert broken["image_error"] == "corrupt_image" and broken["prediction"] == "Yes"  # its truth is "no"
  assert all("image_error" not in line for i, line in enumerate(predictions(one, "pope")) if i != 3)


def test_batch_size_does_not_change_predictions(export, data, one, tmp_path):
  workdir = str(tmp_path / "b1")
  done = evaluate_here(argv(export, data, workdir, **{"eval.batch_size": 1}))
  assert done.returncode == 0, done.stderr[-3000:]
  for task in TASKS:
    assert predictions(workdir, task) == predictions(one, task), task


def test_eight_devices_give_the_same_predictions(export, data, one, tmp_path):
  workdir = str(tmp_path / "d8")
  done = evaluate(argv(export, data, workdir), devices=8)
  assert done.returncode == 0, done.stderr[-3000:]
  for task in TASKS:
    assert predictions(workdir, task) == predictions(one, task), task


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_give_the_same_predictions(export, data, one, tmp_path):
  """jax.distributed on localhost, 4 CPU devices each: every process answers its share."""
  workdir, port = str(tmp_path / "p2"), free_port()
  env = lambda i: {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)}
  runs = [evaluate(argv(export, data, workdir), devices=4, env=env(i), wait=False) for i in range(2)]
  outs = [r.communicate(timeout=600) for r in runs]
  assert [r.returncode for r in runs] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
  for task in TASKS:
    assert predictions(workdir, task) == predictions(one, task), task


def test_a_rerun_continues_after_the_last_complete_line(export, data, one, tmp_path):
  workdir = str(tmp_path / "resumed")
  shutil.copytree(os.path.join(one, "eval"), os.path.join(workdir, "eval"))
  path = os.path.join(workdir, "eval", "pope.jsonl")
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(lines[:4])
    f.write(lines[4][:20])  # a line cut by the interruption
  os.remove(os.path.join(workdir, "eval", "gqa.jsonl"))
  done = evaluate_here(argv(export, data, workdir))
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.load(open(os.path.join(workdir, "eval", "results.json"), encoding="utf-8"))
  assert results["pope"]["answered_now"] == 6 and results["mmlu"]["answered_now"] == 0
  for task in TASKS:
    assert predictions(workdir, task) == predictions(one, task), task


def test_another_models_predictions_are_not_continued(export, data, one, inputs, tmp_path):
  workdir = str(tmp_path / "other")
  shutil.copytree(os.path.join(one, "eval"), os.path.join(workdir, "eval"))
  done = evaluate_here(argv(export, data, workdir, **{"eval.prompt_style": "lmms_eval"}))
  assert_one_error_line(done.returncode, done.stderr, "run.json: expected predictions of")


@pytest.mark.parametrize("extra, message", [
    ({"eval.tasks": "pope,vqav3"}, "eval.tasks: expected tasks among gqa"),
    ({"eval.tasks": "pope,pope"}, "eval.tasks: expected each task once"),
    ({"eval.tasks": ""}, "eval.tasks: expected at least one task"),
    ({"eval.data.pope": ""}, "eval.data.pope: expected the folder of its published files"),
    ({"eval.data.pope": "/nonexistent"}, "/nonexistent: expected a folder holding lmms-lab/POPE"),
    ({"eval.prompt_style": "chatty"}, "eval.prompt_style: expected one of llava, lmms_eval"),
    ({"eval.batch_size": 0}, "eval.batch_size: expected an integer >= 1"),
    ({"eval.model": "/nonexistent/model"}, "eval.model: expected a model"),
])
def test_bad_input_is_one_error_line_before_the_model_loads(export, data, tmp_path, extra, message):
  done = evaluate_here(argv(export, data, str(tmp_path / "w"), **extra))
  assert_one_error_line(done.returncode, done.stderr, message)
  assert not os.path.exists(tmp_path / "w" / "eval" / "pope.jsonl")


def test_a_missing_column_is_named_before_the_model_loads(export, data, tmp_path):
  rows = files.rows_of("pope", 3)
  broken = {c: t for c, t in files.SCHEMAS["pope"].items() if c != "category"}
  files.write_split(str(tmp_path / "pope"), files.tasks.TASKS["pope"].parquet, broken, rows)
  done = evaluate_here(argv(export, {**data, "pope": str(tmp_path / "pope")}, str(tmp_path / "w")))
  assert_one_error_line(done.returncode, done.stderr, "category")


def test_a_text_decoder_is_refused_for_image_tasks(data, inputs, tmp_path):
  done = evaluate_here(argv(inputs["decoder"], data, str(tmp_path / "w")))
  assert_one_error_line(done.returncode, done.stderr, "eval.model: expected a vision-language model for pope, gqa")


def test_training_reports_what_the_command_gives_for_its_export(trained, synthetic_gqa, export, tmp_path):
  """eval.tasks at the end of training, and the command on the exported model: the same
  questions (the synthetic held-out set in GQA's layout), the same answers and score."""
  with open(os.path.join(trained, "metrics.jsonl"), encoding="utf-8") as f:
    reported = [json.loads(line) for line in f if "gqa/exact_match" in line]
  assert len(reported) == 1 and "eval_accuracy" in reported[0]
  workdir = str(tmp_path / "w")
  done = evaluate_here(argv(export, {"gqa": synthetic_gqa}, workdir, **{"eval.tasks": "gqa"}))
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.load(open(os.path.join(workdir, "eval", "results.json"), encoding="utf-8"))
  assert results["gqa"]["metrics"]["exact_match"] == reported[0]["gqa/exact_match"]
  assert predictions(workdir, "gqa") == predictions(trained, "gqa")
  assert len(predictions(workdir, "gqa")) == 8  # every held-out question of the fixture has an image


def test_the_prune_report_gains_the_benchmarks(trained, synthetic_gqa, inputs, tmp_path):
  """With eval.tasks set, pruning answers them for the model before and after removal."""
  workdir = shutil.copytree(trained, str(tmp_path / "w"))
  shutil.rmtree(os.path.join(workdir, "eval"))
  args = train_fixtures.overrides(inputs, workdir, **{"prune.k": 1, "prune.latency_runs": 2, "eval.tasks": "gqa",
                                                       "eval.data.gqa": synthetic_gqa, "eval.max_new_tokens": 4,
                                                       "eval.num_samples": 2})
  done = run_command_here(prune_main, args)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.load(open(os.path.join(workdir, "prune", "report.json"), encoding="utf-8"))
  for stage in ("before", "pruned"):
    assert set(report[stage]["benchmarks"]) == {"gqa/exact_match"}, stage
    assert len(predictions(os.path.join(workdir, "prune"), f"{stage}/gqa")) == 8
  before = predictions(os.path.join(workdir, "prune"), "before/gqa")
  assert [p["prediction"] for p in before] == [p["prediction"] for p in predictions(trained, "gqa")]
  with open(os.path.join(workdir, "prune", "report.md"), encoding="utf-8") as f:
    assert "| benchmark gqa/exact_match |" in f.read()
