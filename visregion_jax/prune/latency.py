"""Forward latency that says how far it can be trusted.

Each model's jitted forward (logits of every token of one calibration batch) is
compiled and run once untimed, then timed `runs` times. The models compared are timed
in turn within each round (before, pruned, healed, before, ...), so a change in the
machine's load during the measurement falls on all of them rather than on one.
Reported per model: every time, the min, the median and the spread, (max - min) /
median; for the whole block, the cores other processes kept busy meanwhile
(cpu_load.OtherLoad). A comparison with the first model is flagged (a warning line in
the report) when a model's spread exceeds SPREAD_LIMIT, when other processes kept more
than LOAD_LIMIT cores busy, or when a model's [min, max] overlaps the first model's:
then the difference is within the noise of this machine.
"""

import os
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from visregion_jax.cpu_load import OtherLoad
from visregion_jax.models.lvlm import LVLM

SPREAD_LIMIT = 0.1  # (max - min) / median
LOAD_LIMIT = 0.5    # average cores busy with other processes


def _forward(model, batch: dict):
  """A call that runs the model's jitted forward on `batch` and waits for it."""
  model.eval()
  graphdef, state = nnx.split(model)
  keys = ("attention_mask", "pixel_values", "image_mask") if isinstance(model, LVLM) else ("attention_mask",)
  inputs = {k: jnp.asarray(batch[k]) for k in keys}
  ids = jnp.asarray(batch["input_ids"])

  @jax.jit
  def forward(state, input_ids, inputs):
    return nnx.merge(graphdef, state).forward(input_ids, **inputs).logits

  return lambda: jax.block_until_ready(forward(state, ids, inputs))


def summary(times: list) -> dict:
  median = statistics.median(times)
  return {"min_s": min(times), "median_s": median, "max_s": max(times),
          "spread": (max(times) - min(times)) / median if median > 0 else 0.0, "times_s": list(times)}


def time_models(models: dict, batch: dict, runs: int) -> dict:
  """{"runs", "other_load_cores", "cpu_count", "models": {name: summary}} for the
  models of `models` (name -> model, the reference first), timed in turn per round."""
  calls = {}
  for name, model in models.items():
    calls[name] = _forward(model, batch)
    calls[name]()  # compiles
    calls[name]()  # warm
  times = {name: [] for name in models}
  with OtherLoad() as load:
    for _ in range(runs):
      for name, call in calls.items():
        start = time.perf_counter()
        call()
        times[name].append(time.perf_counter() - start)
  return {"runs": runs, "other_load_cores": load.cores, "cpu_count": os.cpu_count(),
          "models": {name: summary(t) for name, t in times.items()}}


def warnings(latency: dict) -> list:
  """Why the latency comparison with the first model cannot be trusted, one line per reason."""
  out = []
  load = latency["other_load_cores"]
  if load is None:
    out.append("other processes' load is unknown (no /proc/stat): timings may include their work")
  elif load > LOAD_LIMIT:
    out.append(f"other processes kept {load:.2f} of {latency['cpu_count']} cores busy while timing "
               f"(over {LOAD_LIMIT}): the latencies include their contention")
  (first, reference), *others = latency["models"].items()
  for name, s in latency["models"].items():
    if s["spread"] > SPREAD_LIMIT:
      out.append(f"{name}: the {latency['runs']} timings spread by {100 * s['spread']:.0f}% of their median "
                 f"(over {100 * SPREAD_LIMIT:.0f}%)")
  for name, s in others:
    if s["min_s"] <= reference["max_s"] and reference["min_s"] <= s["max_s"]:
      out.append(f"{name} vs {first}: their latency ranges [min, max] overlap, so the difference "
                 f"({1e3 * (s['median_s'] - reference['median_s']):+.2f} ms in the medians) is within the noise")
  return out
