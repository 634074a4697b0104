"""`WORKDIR/metrics.jsonl`: one JSON object per logged step or evaluation."""

import json
import os

import jax


class MetricsLog:
  """Written by process 0; on resume, lines past the restored step are dropped (they
  would repeat)."""

  def __init__(self, workdir: str, resume_step: int):
    self.path = os.path.join(workdir, "metrics.jsonl")
    if jax.process_index() != 0:
      self.path = None
      return
    kept = []
    if os.path.exists(self.path):
      with open(self.path, encoding="utf-8") as f:
        kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= resume_step]
    with open(self.path, "w", encoding="utf-8") as f:
      f.writelines(kept)

  def write(self, record: dict) -> None:
    if self.path:
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
