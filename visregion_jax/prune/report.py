"""The pruning report: the same measurements of the model before and after pruning."""

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from visregion_jax.convert.params import model_params
from visregion_jax.evaluation import evaluate
from visregion_jax.models.lvlm import LVLM
from visregion_jax.publish import write_file_atomically

LATENCY_RUNS = 5
METRICS = ("eval_accuracy", "text_perplexity", "forward_latency_s", "num_params")


def forward_latency_s(model, batch: dict, runs: int = LATENCY_RUNS) -> float:
  """Median seconds of the jitted forward (logits of every token) on `batch`, timed
  after a warm-up call that compiles it."""
  model.eval()
  graphdef, state = nnx.split(model)
  keys = ("attention_mask", "pixel_values", "image_mask") if isinstance(model, LVLM) else ("attention_mask",)
  inputs = {k: jnp.asarray(batch[k]) for k in keys}

  @jax.jit
  def forward(state, input_ids, inputs):
    return nnx.merge(graphdef, state).forward(input_ids, **inputs).logits

  ids = jnp.asarray(batch["input_ids"])
  jax.block_until_ready(forward(state, ids, inputs))
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(forward(state, ids, inputs))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure(config, model, tokenizer, data_config, batch) -> dict:
  """The report's numbers for one model; None where data.eval_json / text_eval_json is unset."""
  out = evaluate(config, model, tokenizer, data_config)
  out["forward_latency_s"] = forward_latency_s(model, batch)
  out["num_params"] = int(sum(v.size for v in model_params(model).values()))
  return {key: out.get(key) for key in METRICS + ("eval_accuracy_per_task",)}


def _cell(key: str, value) -> str:
  if value is None:
    return "n/a"
  if key == "num_params":
    return f"{value:,}"
  if key == "forward_latency_s":
    return f"{value * 1e3:.2f} ms"
  return f"{value:.4f}"


def write_report(out_dir: str, report: dict) -> None:
  write_file_atomically(os.path.join(out_dir, "report.json"), json.dumps(report, indent=2))
  names = {"eval_accuracy": "held-out answer accuracy (data.eval_json)",
           "text_perplexity": "text perplexity (data.text_eval_json)",
           "forward_latency_s": f"forward latency (median of {LATENCY_RUNS}, batch {report['latency_batch']})",
           "num_params": "parameters"}
  lines = ["# Pruning report", "",
           f"Model `{report['model']}`: {report['num_layers']['before']} -> {report['num_layers']['after']} "
           f"decoder layers. Removed {report['removed']} by {report['metric']} "
           f"({report['tokens']} tokens, block of {report['block_size']}); visual region "
           f"{report['region']['before']} (after pruning: {report['region']['after']}).", "",
           "| metric | before | after |", "|---|---|---|"]
  lines += [f"| {names[k]} | {_cell(k, report['before'][k])} | {_cell(k, report['after'][k])} |" for k in METRICS]
  write_file_atomically(os.path.join(out_dir, "report.md"), "\n".join(lines) + "\n")
