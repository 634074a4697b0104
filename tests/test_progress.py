"""What a run reports: metrics.jsonl and TensorBoard event files, read back with
TensorBoard's own reader; a resumed run neither repeats nor loses a step."""

import json
import os

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from visregion_jax.train.progress import Progress


def scalars(workdir: str) -> dict:
  """{tag: {step: value}} as TensorBoard reads WORKDIR/tensorboard."""
  events = EventAccumulator(os.path.join(workdir, "tensorboard"), size_guidance={"scalars": 0})
  events.Reload()
  return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def record(step: int) -> dict:  # values exact in float32, as TensorBoard stores them
  return {"step": step, "loss": 1.0 / 2 ** step, "learning_rate": 0.1 * step,
          "learning_rates": {"projector": 0.01 * step, "region": 0.1 * step}, "tokens_per_sec": 100.0 + step,
          "skipped_samples": step // 2, "grad_norm": 2.0 * step, "skip_reasons": {"too_long": step // 2}}


def test_scalars_reach_tensorboard_and_resume_purges_the_future(tmp_path):
  workdir = str(tmp_path)
  progress = Progress(workdir, 0, 5)
  for step in range(1, 5):
    progress.record(record(step), f"step {step}")
  progress.record({"step": 4, "eval_accuracy": 0.5, "eval_accuracy_per_task": {"digits": 0.25}})
  progress.close()
  read = scalars(workdir)
  assert read["loss"] == {s: 1.0 / 2 ** s for s in range(1, 5)}
  assert read["learning_rates/region"] == {s: np.float32(0.1 * s) for s in range(1, 5)}
  assert read["grad_norm"][3] == 6.0 and read["skipped_samples"][4] == 2 and read["tokens_per_sec"][1] == 101.0
  assert read["eval_accuracy"] == {4: 0.5} and read["eval_accuracy_per_task/digits"] == {4: 0.25}
  assert "step" not in read

  resumed = Progress(workdir, 2, 5)  # a checkpoint of step 2: steps 3 and 4 will run again
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    assert [json.loads(line)["step"] for line in f] == [1, 2]
  for step in range(3, 6):
    resumed.record({**record(step), "loss": 10.0 + step})
  resumed.close()
  assert scalars(workdir)["loss"] == {1: 0.5, 2: 0.25, 3: 13.0, 4: 14.0, 5: 15.0}
