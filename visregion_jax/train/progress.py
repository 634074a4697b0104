"""What a run reports while it runs, written by process 0.

- `WORKDIR/metrics.jsonl`: one JSON object per logged step or evaluation; on resume,
  lines past the restored step are dropped (they would repeat).
- `WORKDIR/tensorboard/`: TensorBoard event files (tensorboardX: no TensorFlow) with
  every number of those records (tokens/s, padding share, TFLOP/s per device and MFU
  among them), learning rates per group as `learning_rates/<group>`;
  events past the restored step are purged on resume.
- The console: on a terminal a tqdm bar (elapsed, ETA, loss, tokens/s); elsewhere (pod
  logs, CI) a plain line every `train.log_every` steps.
"""

import json
import os
import time

import jax
import tqdm
from tensorboardX import SummaryWriter

from visregion_jax.console import log_line


def _numbers(record: dict, prefix: str = "") -> dict:
  """The numeric leaves of a record, nested keys joined by `/`."""
  out = {}
  for key, value in record.items():
    if isinstance(value, dict):
      out.update(_numbers(value, f"{prefix}{key}/"))
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
      out[prefix + key] = value
  return out


class Progress:
  def __init__(self, workdir: str, start_step: int, total_steps: int):
    self.main = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.writer = None
    self.bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                         disable=None if self.main else True)  # None: off when not a terminal
    if not self.main:
      return
    kept = []
    if os.path.exists(self.path):
      with open(self.path, encoding="utf-8") as f:
        kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= start_step]
    with open(self.path, "w", encoding="utf-8") as f:
      f.writelines(kept)
    # tensorboardX names files by the second: a resumed run's writer in the same second
    # would overwrite the earlier file; nanoseconds keep names unique and in order.
    self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1,
                                filename_suffix=f".{time.time_ns()}")

  def advance(self, loss: float, tokens_per_sec: float) -> None:
    self.bar.update(1)
    self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_sec:.0f}", refresh=False)

  def record(self, record: dict, line: str = "") -> None:
    """A metrics record of `record["step"]`; `line` goes to the console when no bar shows."""
    if not self.main:
      return
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")
    for tag, value in _numbers(record).items():
      self.writer.add_scalar(tag, value, record["step"])
    self.writer.flush()
    if line and self.bar.disable:
      log_line(line)

  def close(self) -> None:
    self.bar.close()
    if self.writer is not None:
      self.writer.close()
