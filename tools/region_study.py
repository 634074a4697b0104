"""The region study: the paper's central comparison, measured on your model and data.

  .venv/bin/python tools/region_study.py --config configs/demo.py \\
      --workdir study_work --out docs/region_study [--prune-k 4] [--config.KEY=VALUE ...]

Trains one arm per layer choice with everything else equal (seed, data order, steps,
learning rates, the config's `region.lora_rank`):
  full       every decoder layer and the projector (embeddings, final norm and LM
             head stay frozen in every arm)
  uniform    the sparse uniform region, `region.fraction` of the layers
  bottom     the same number of consecutive layers from the first one
  top        the same number of consecutive layers ending at the last one
  projector  the projector alone
and measures held-out answer accuracy (`data.eval_json`, visual), text perplexity
(`data.text_eval_json`, textual retention: the untrained base is measured too),
median step time (the compiling first step left out) and optimizer-state bytes.
Then it prunes k = 1..K layers from the uniform-trained and from the full-trained
model: layers are scored once per model (`prune.metric` on the calibration samples
of `prune.*`) and the k lowest are removed, never one of the uniform region's layers
for either model, so both choose among the same candidates.

Outputs in --out: study.md (the tables), results.json, accuracy_by_strategy.png,
text_perplexity_by_strategy.png, accuracy_by_layers_pruned.png and
layer_scores_{uniform,full}.png. In --workdir: inputs/ (the config's `{workdir}`, e.g.
the demo's synthetic data and tower), arms/NAME/ (each a normal training workdir)
and the finished pieces base.json, arms/NAME/study_result.json, prune/NAME.json.
Resumable: a finished piece is read back instead of recomputed, and an interrupted
arm resumes from its last checkpoint.
"""

import copy
import json
import os
import statistics
import sys

from visregion_jax import cli, plots, prune, region
from visregion_jax.config.loading import load_config
from visregion_jax.console import log_line
from visregion_jax.convert import load_tokenizer
from visregion_jax.data.calibration import calibration_batches
from visregion_jax.data.from_config import data_config_for
from visregion_jax.errors import VisRegionError
from visregion_jax.evaluation import evaluate
from visregion_jax.hooks import load_hook
from visregion_jax.loading import load_model
from visregion_jax.prune import job as prune_job
from visregion_jax.prune.report import measure
from visregion_jax.train import loop
from visregion_jax.train.builder import build_model

ARMS = {"full": "full", "uniform": "uniform", "bottom": "first", "top": "last", "projector": "none"}
PRUNED_ARMS = ("uniform", "full")
MiB = 1 << 20


def parse_args(argv: list):
  parser = cli.ArgumentParser(
      prog="tools/region_study.py", description=__doc__.split("\n\n")[0],
      epilog="Every other argument is --config FILE.py or --config.KEY=VALUE, as for "
             "python -m visregion_jax.train.")
  parser.add_argument("--workdir", required=True, help="where the arms train (resumable)")
  parser.add_argument("--out", required=True, help="where the tables and plots go")
  parser.add_argument("--prune-k", type=int, default=4, help="prune k = 1..K layers (0: no pruning)")
  parser.add_argument("--arms", default=",".join(ARMS), help=f"a subset of {','.join(ARMS)}")
  args, config_argv = parser.parse_known_args(argv)
  arms = [a for a in args.arms.split(",") if a]
  unknown = [a for a in arms if a not in ARMS]
  if unknown or not arms:
    parser.error(f"--arms: expected names from {','.join(ARMS)}, got {args.arms!r}")
  if args.prune_k < 0:
    parser.error(f"--prune-k: expected 0 or more, got {args.prune_k}")
  args.arms = arms
  return args, config_argv


def read_json(path: str):
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write_json(path: str, value) -> None:
  """Written beside and renamed, so an interrupted write never looks finished."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2)
  os.replace(path + ".tmp", path)


def study_config(config_argv: list, workdir: str):
  """The config with `{workdir}` paths under WORKDIR/inputs, checked for what the study reads."""
  config = load_config(config_argv + [f"--config.workdir={os.path.join(workdir, 'inputs')}"],
                       "tools/region_study.py")
  for key in ("eval_json", "text_eval_json"):
    if not config.data.get(key):
      raise VisRegionError(f"data.{key}", "expected a held-out set: the study measures it for every arm")
  return config


def arm_config(config, workdir: str, arm: str):
  c = copy.deepcopy(config)
  c.workdir = os.path.join(workdir, "arms", arm)
  c.region.strategy = ARMS[arm]
  c.train.export_hf = True     # pruning reads the export, as `visregion_jax.prune` does
  c.eval.at_start = False      # the base is measured once (base.json)
  c.eval.at_end = True
  if "demo" in c:
    c.demo.transformers_check = False
  return c


def measure_base(config, workdir: str) -> dict:
  path = os.path.join(workdir, "base.json")
  saved = read_json(path)
  if saved is not None:
    return saved
  c = arm_config(config, workdir, "projector")  # nothing trains: the initial model
  c.workdir = os.path.join(workdir, "base")
  model, _ = build_model(c, c.workdir)
  tokenizer = load_tokenizer(model.config.source)
  data_config = data_config_for(c, model, tokenizer, c.model.get("vision_tower"))
  result = evaluate(c, model, tokenizer, data_config)
  result.pop("eval_examples", None)
  result["num_layers"] = len(model.layers)
  write_json(path, result)
  return result


def train_arm(config, workdir: str, arm: str) -> dict:
  c = arm_config(config, workdir, arm)
  path = os.path.join(c.workdir, "study_result.json")
  saved = read_json(path)
  if saved is not None:
    log_line(f"study: arm {arm} finished earlier ({path})")
    return saved
  log_line(f"study: training arm {arm} (region.strategy={ARMS[arm]})")
  results = loop.run(c)
  times = results["step_times_s"]
  after = results["after"]
  result = {"arm": arm, "strategy": ARMS[arm],
            "trained_layers": read_json(os.path.join(c.workdir, "region.json"))["region_layers"],
            "trainable_params": results["trainable_params"], "optimizer_bytes": results["optimizer_bytes"],
            # A resumed arm timed fewer steps; the first step of a process compiles.
            "step_time_s": statistics.median(times[1:] or times) if times else None,
            "timed_steps": max(len(times) - 1, 1) if times else 0,
            **{k: after.get(k) for k in ("eval_accuracy", "eval_accuracy_per_task", "eval_loss", "text_perplexity")}}
  write_json(path, result)
  return result


def protected_layers(config, num_layers: int) -> tuple:
  return region.select_layers(num_layers, config.region.fraction, "uniform")


def prune_arm(config, workdir: str, arm: str, max_k: int) -> dict:
  """Scores of the arm's trained model and its metrics with k = 0..max_k layers removed."""
  path = os.path.join(workdir, "prune", f"{arm}.json")
  saved = read_json(path) or {"k": {}}
  c = arm_config(config, workdir, arm)
  hf_dir = os.path.join(c.workdir, "hf")
  model = load_model(hf_dir, dtype=c.model.get("dtype") or None)
  tokenizer = load_tokenizer(model.config.source)
  data_config = data_config_for(c, model, tokenizer, hf_dir)
  source = prune_job.calibration_source(c)
  batches = lambda: calibration_batches(source, tokenizer, data_config, c.prune.calibration_samples,
                                        c.prune.batch_size, c.seed)
  keep = protected_layers(config, len(model.layers))
  if "scores" not in saved:
    log_line(f"study: scoring the layers of the {arm}-trained model")
    saved["scores"] = [float(s) for s in prune.layer_scores(model, batches(), metric=c.prune.metric,
                                                            tokens=c.prune.tokens)]
    saved.update(metric=c.prune.metric, protected=list(keep))
    write_json(path, saved)
  latency_batch = next(batches())
  for k in range(max_k + 1):
    if str(k) in saved["k"]:
      continue
    removed = prune.layers_to_remove(saved["scores"], k, keep) if k else ()
    pruned = prune.drop_layers(model, removed) if k else model
    log_line(f"study: {arm}-trained model, k={k}, removing {list(removed)}")
    metrics = measure(c, pruned, tokenizer, data_config, latency_batch)
    saved["k"][str(k)] = {"removed": list(removed), **metrics}
    write_json(path, saved)
  return saved


# --- the report -------------------------------------------------------------------------

def _num(value, digits: int = 3) -> str:
  return "n/a" if value is None else f"{value:.{digits}f}"


def arms_table(base: dict, arms: dict) -> list:
  full_time = arms.get("full", {}).get("step_time_s")
  rows = ["| arm | trained decoder layers | trainable params | optimizer MiB | step s | step / full "
          "| held-out accuracy | text perplexity |", "|---|---|---|---|---|---|---|---|",
          f"| base (untrained) | none | 0 | 0 | - | - | {_num(base.get('eval_accuracy'))} "
          f"| {_num(base.get('text_perplexity'), 2)} |"]
  for name, r in arms.items():
    layers = r["trained_layers"]
    shown = "none" if not layers else ("all" if r["strategy"] == "full" else ",".join(map(str, layers)))
    ratio = r["step_time_s"] / full_time if full_time and r["step_time_s"] else None
    rows.append(f"| {name} | {shown} | {r['trainable_params']:,} | {r['optimizer_bytes'] / MiB:.1f} "
                f"| {_num(r['step_time_s'])} | {_num(ratio)} | {_num(r['eval_accuracy'])} "
                f"| {_num(r['text_perplexity'], 2)} |")
  return rows


def prune_table(pruned: dict) -> list:
  rows = ["| trained arm | k | removed layers | held-out accuracy | text perplexity | params "
          "| forward ms |", "|---|---|---|---|---|---|---|"]
  for arm, p in pruned.items():
    for k, r in sorted(p["k"].items(), key=lambda kv: int(kv[0])):
      removed = ",".join(map(str, r["removed"])) or "none"
      rows.append(f"| {arm} | {k} | {removed} | {_num(r['eval_accuracy'])} | {_num(r['text_perplexity'], 2)} "
                  f"| {r['num_params']:,} | {r['forward_latency_s'] * 1e3:.1f} |")
  return rows


def draw_plots(out: str, base: dict, arms: dict, pruned: dict) -> list:
  names = ["base"] + list(arms)
  colors = [plots.PLAIN if n != "uniform" else plots.REGION for n in names]
  rows = [base] + list(arms.values())
  files = [
      plots.bar_chart(os.path.join(out, "accuracy_by_strategy.png"), [r.get("eval_accuracy") for r in rows],
                      colors, labels=names, title="Held-out answer accuracy by trained layers",
                      y_label="accuracy", x_label="arm"),
      plots.bar_chart(os.path.join(out, "text_perplexity_by_strategy.png"),
                      [r.get("text_perplexity") for r in rows], colors, labels=names,
                      title="Text perplexity by trained layers (lower is better)",
                      y_label="perplexity", x_label="arm")]
  if pruned:
    series = [(arm, plots.REGION if arm == "uniform" else plots.PLAIN) for arm in pruned]
    ks = sorted({int(k) for p in pruned.values() for k in p["k"]})
    values, colors = [], []
    for k in ks:
      for arm, color in series:
        values.append(pruned[arm]["k"].get(str(k), {}).get("eval_accuracy"))
        colors.append(color)
      values.append(None)
      colors.append(plots.PLAIN)
    files.append(plots.bar_chart(
        os.path.join(out, "accuracy_by_layers_pruned.png"), values, colors, labels=ks, group=len(series) + 1,
        legend=[(color, f"{arm}-trained") for arm, color in series],
        title="Held-out accuracy after pruning k layers outside the uniform region",
        y_label="accuracy", x_label="layers pruned (k)"))
    for arm, p in pruned.items():
      removed = p["k"][str(max(ks))]["removed"]
      files.append(plots.layer_scores_chart(
          os.path.join(out, f"layer_scores_{arm}.png"), p["scores"], region=p["protected"], removed=removed,
          title=f"{p['metric']} per layer, {arm}-trained model; removed at k={max(ks)}: {removed}",
          y_label=p["metric"]))
  return files


def write_report(out: str, command: str, config, base: dict, arms: dict, pruned: dict) -> dict:
  os.makedirs(out, exist_ok=True)
  results = {"command": command, "steps": config.train.steps, "seed": config.seed,
             "lora_rank": config.region.lora_rank, "fraction": config.region.fraction,
             "base": base, "arms": arms, "pruned": pruned}
  write_json(os.path.join(out, "results.json"), results)
  files = draw_plots(out, base, arms, pruned)
  lines = ["# Region study", "", "```", command, "```", "",
           f"{config.train.steps} steps per arm, seed {config.seed}, "
           f"{'LoRA r=' + str(config.region.lora_rank) if config.region.lora_rank else 'full update of the trained layers'}"
           f", region fraction {config.region.fraction}.", "", *arms_table(base, arms), ""]
  if pruned:
    lines += [f"Pruning by {next(iter(pruned.values()))['metric']}, never a layer of the uniform region:", "",
              *prune_table(pruned), ""]
  lines += [f"![{os.path.splitext(os.path.basename(f))[0]}]({os.path.basename(f)})" for f in files]
  with open(os.path.join(out, "study.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return results


def run(argv: list) -> dict:
  args, config_argv = parse_args(argv)
  workdir = os.path.abspath(args.workdir)
  config = study_config(config_argv, workdir)
  prune_arms = [a for a in PRUNED_ARMS if a in args.arms] if args.prune_k else []
  hook = load_hook(config.get("hook", ""))
  if hook:  # the demo config writes its data and pretrains its tower first
    hook.prepare(config, log_line)
  base = measure_base(config, workdir)
  num_layers = base["num_layers"]
  candidates = num_layers - len(protected_layers(config, num_layers))
  if args.prune_k > candidates:
    raise VisRegionError("--prune-k", f"expected at most {candidates} (the layers outside the uniform region "
                         f"of {num_layers}), got {args.prune_k}")
  arms = {arm: train_arm(config, workdir, arm) for arm in args.arms}
  pruned = {arm: prune_arm(config, workdir, arm, args.prune_k) for arm in prune_arms}
  command = " ".join(["tools/region_study.py"] + list(argv))
  results = write_report(os.path.abspath(args.out), command, config, base, arms, pruned)
  log_line(f"study: wrote {os.path.join(os.path.abspath(args.out), 'study.md')}")
  return results


def main(argv=None) -> int:
  return cli.run_main(lambda: run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
  sys.exit(main())
