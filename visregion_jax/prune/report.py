"""The pruning report: the same measurements of the model before pruning, after it and,
with healing, after healing (report.md to read, report.json for tools)."""

import json
import os
import shutil

from visregion_jax.benchmarks.job import benchmark_metrics
from visregion_jax.convert.params import model_params
from visregion_jax.evaluation import evaluate
from visregion_jax.prune.latency import warnings
from visregion_jax.publish import write_file_atomically

MODELS = ("before", "pruned", "healed")
QUALITY = ("eval_accuracy", "text_perplexity", "num_params", "eval_accuracy_per_task")


def quality(config, model, tokenizer, data_config, stage: str) -> dict:
  """Accuracy, perplexity (None where data.eval_json / text_eval_json is unset), size and
  the configured benchmarks (`eval.tasks`, answered into WORKDIR/prune/eval/<stage>)."""
  out = evaluate(config, model, tokenizer, data_config, held_out_loss=False)
  out["num_params"] = int(sum(v.size for v in model_params(model).values()))
  out_dir = os.path.join(os.path.abspath(config.workdir), "prune", "eval", stage)
  shutil.rmtree(out_dir, ignore_errors=True)  # a rerun may prune other layers: never continue old answers
  return {**{key: out.get(key) for key in QUALITY},
          "benchmarks": benchmark_metrics(config, model, tokenizer, data_config, out_dir, f"the {stage} model")}


def add_latency(report: dict, latency: dict) -> None:
  """Each timed model's latency summary (and its median as forward_latency_s) into its
  column of the report; the block's load and warnings under "latency"."""
  for name, summary in latency["models"].items():
    report[name].update(forward_latency_s=summary["median_s"], forward_latency=summary)
  report["latency"] = {k: latency[k] for k in ("runs", "other_load_cores", "cpu_count")}
  report["latency"]["warnings"] = warnings(latency)


def _cell(value, kind: str) -> str:
  if value is None:
    return "n/a"
  if kind == "count":
    return f"{value:,}"
  if kind == "ms":
    return f"{value * 1e3:.2f} ms"
  if kind == "percent":
    return f"{100 * value:.1f}%"
  return f"{value:.4f}"


def _selection_text(report: dict) -> str:
  s = report["selection"]
  if s["mode"] == "given":
    how = "as given by prune.layers"
  elif s["mode"] == "iterative":
    order = [r["removed_original"] for r in s["rounds"]]
    how = f"one at a time, the lowest {s['metric']} score re-computed after each removal (in the order {order})"
  else:
    how = (f"the lowest-scoring block of {s['k']}" if s["contiguous"] else f"the {s['k']} lowest scores") + \
        f" by {s['metric']} at once"
  return (f"Removed {report['removed']} {how} ({s['tokens']} tokens, block of {s['block_size']}"
          f"{', region layers allowed' if s['allow_region'] else ''}); visual region {report['region']['before']} "
          f"(after pruning: {report['region']['after']}).")


def _heal_text(heal) -> str:
  if heal is None:
    return "Not healed (prune.heal_steps = 0)."
  update = f"LoRA r={heal['lora_rank']}, alpha={heal['lora_alpha']:g}" if heal["lora_rank"] else "full update"
  return (f"Healed: {heal['steps']} training steps ({update}, lr {heal['lr']:g}, projector frozen) of the pruned "
          f"model's layers {heal['layers']} (prune.heal_layers={heal['layers_spec']}) in `{heal['workdir']}`; "
          f"this run trained {heal['steps_run']} of them in {heal['train_seconds']:.1f} s "
          f"({heal['seconds']:.1f} s with building and export).")


def write_report(out_dir: str, report: dict) -> None:
  write_file_atomically(os.path.join(out_dir, "report.json"), json.dumps(report, indent=2))
  columns = [name for name in MODELS if report.get(name)]
  latency = report["latency"]
  load = latency["other_load_cores"]
  rows = [("held-out answer accuracy (data.eval_json)", lambda m: _cell(m["eval_accuracy"], "")),
          ("text perplexity (data.text_eval_json)", lambda m: _cell(m["text_perplexity"], "")),
          (f"forward latency, median of {latency['runs']} (batch {report['latency_batch']})",
           lambda m: _cell(m["forward_latency"]["median_s"], "ms")),
          ("forward latency, fastest run", lambda m: _cell(m["forward_latency"]["min_s"], "ms")),
          ("forward latency spread, (max - min) / median", lambda m: _cell(m["forward_latency"]["spread"], "percent")),
          ("parameters", lambda m: _cell(m["num_params"], "count"))]
  rows += [(f"benchmark {name}", lambda m, name=name: _cell(m["benchmarks"].get(name), ""))
           for name in report["before"].get("benchmarks", {})]
  lines = ["# Pruning report", "",
           f"Model `{report['model']}`: {report['num_layers']['before']} -> {report['num_layers']['after']} "
           f"decoder layers. {_selection_text(report)}", "", _heal_text(report["heal"]), "",
           "| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
  lines += [f"| {name} | " + " | ".join(cell(report[c]) for c in columns) + " |" for name, cell in rows]
  lines += ["", f"Latency: the models were timed in turn, {latency['runs']} rounds after a warm-up; other "
            f"processes kept {'an unknown number of' if load is None else f'{load:.2f}'} of "
            f"{latency['cpu_count']} cores busy meanwhile."]
  lines += [f"Warning: {w}" for w in latency["warnings"]]
  write_file_atomically(os.path.join(out_dir, "report.md"), "\n".join(lines) + "\n")
