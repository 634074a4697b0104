"""The region study's report: estimates with 95% intervals, the paper's comparisons as
paired differences, and the plots (tools/region_study.py measures, this file reports).

Every cell is `mean [low, high]`: the mean over seeds and its two-level bootstrap
interval (visregion_jax/bootstrap.py). A comparison's verdict says whether its interval
excludes zero ("higher" / "lower") or not ("not separable").
"""

import json
import os

import numpy as np

from visregion_jax import bootstrap, plots
from visregion_jax.publish import write_file_atomically

MiB = 1 << 20
# (arm, reference) pairs the paper's claims rest on, compared where both were run.
COMPARISONS = (("uniform", "full"), ("scored", "uniform"), ("bottom", "uniform"), ("top", "uniform"),
               ("projector", "uniform"), ("uniform", "base"), ("full", "base"))
METRICS = {"accuracy": ("eval_hits", bootstrap.accuracy), "text_perplexity": ("text_sample_losses",
                                                                             bootstrap.perplexity)}


def _data(runs: list, key: str) -> np.ndarray:
  return np.asarray([r[key] for r in runs], np.float64)


def summary(runs: list) -> dict:
  """Each metric's estimate over the runs of one arm (one run per seed)."""
  return {name: bootstrap.estimate(_data(runs, key), stat) for name, (key, stat) in METRICS.items()}


def compared(a: list, b: list) -> dict:
  out = {}
  for name, (key, stat) in METRICS.items():
    diff = bootstrap.difference(_data(a, key), _data(b, key), stat)
    out[name] = {**diff, "verdict": bootstrap.verdict(diff)}
  return out


def _cell(e: dict, digits: int = 3) -> str:
  return f"{e['mean']:.{digits}f} [{e['low']:.{digits}f}, {e['high']:.{digits}f}]"


def _diff_cell(e: dict, digits: int = 3) -> str:
  return f"{e['mean']:+.{digits}f} [{e['low']:+.{digits}f}, {e['high']:+.{digits}f}] {e['verdict']}"


def _layers(runs: list) -> str:
  """The trained layers, one list if every seed chose the same (only `scored` may not)."""
  shown = []
  for r in runs:
    layers = r["trained_layers"]
    text = "none" if not layers else "all" if r["strategy"] == "full" else ",".join(map(str, layers))
    if text not in shown:
      shown.append(text)
  return " / ".join(shown)


def _mean(values) -> float:
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else float("nan")


def arms_table(base: dict, arms: dict, stats: dict) -> list:
  full = _mean(r["step_time_s"] for r in arms["full"]) if "full" in arms else None
  rows = ["| arm | trained decoder layers | optimizer MiB | step s | step / full | held-out accuracy "
          "| text perplexity |", "|---|---|---|---|---|---|---|",
          f"| base (untrained) | none | 0 | - | - | {_cell(base['accuracy'])} | "
          f"{_cell(base['text_perplexity'], 2)} |"]
  for name, runs in arms.items():
    step = _mean(r["step_time_s"] for r in runs)
    ratio = f"{step / full:.3f}" if full else "-"
    rows.append(f"| {name} | {_layers(runs)} | {runs[0]['optimizer_bytes'] / MiB:.1f} | {step:.3f} | {ratio} "
                f"| {_cell(stats[name]['accuracy'])} | {_cell(stats[name]['text_perplexity'], 2)} |")
  return rows


def benchmarks_table(arms: dict) -> list:
  """Each arm's benchmark metrics (`eval.tasks`), the mean over seeds and the seeds' range."""
  names = sorted({k for runs in arms.values() for r in runs for k in r.get("benchmarks", {})})
  if not names:
    return []
  rows = ["| arm | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for arm, runs in arms.items():
    cells = []
    for name in names:
      values = [r["benchmarks"][name] for r in runs if name in r.get("benchmarks", {})]
      cells.append(f"{np.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})" if values else "-")
    rows.append(f"| {arm} | " + " | ".join(cells) + " |")
  return ["Benchmarks (eval.tasks; mean over seeds, range in brackets):", "", *rows, ""]


def comparisons_table(comparisons: dict) -> list:
  rows = ["| comparison | accuracy difference | text perplexity difference |", "|---|---|---|"]
  for pair, c in comparisons.items():
    rows.append(f"| {pair} | {_diff_cell(c['accuracy'])} | {_diff_cell(c['text_perplexity'], 2)} |")
  return rows


def prune_summary(trained: list, pruned: list) -> dict:
  """Per k (0 = the trained model): estimates pruned and healed, and the paired
  differences pruned - unpruned, healed - unpruned and healed - pruned."""
  out = {"0": {"removed": [[] for _ in pruned], "pruned": summary(trained),
               "forward_ms": 1e3 * _mean(p["unpruned"]["forward_latency_s"] for p in pruned),
               "num_params": pruned[0]["unpruned"]["num_params"]}}
  for k in pruned[0]["k"]:
    runs = [p["k"][k] for p in pruned]
    just_pruned = [r["pruned"] for r in runs]
    row = {"removed": [r["removed"] for r in runs], "pruned": summary(just_pruned),
           "pruned_minus_unpruned": compared(just_pruned, trained),
           "forward_ms": 1e3 * _mean(r["pruned"]["forward_latency_s"] for r in runs),
           "num_params": runs[0]["pruned"]["num_params"]}
    if "healed" in runs[0]:
      healed = [r["healed"] for r in runs]
      row.update(healed=summary(healed), healed_minus_pruned=compared(healed, just_pruned),
                 healed_minus_unpruned=compared(healed, trained),
                 heal_train_s=_mean(h["heal_train_seconds"] for h in healed))
    out[k] = row
  return out


def prune_table(arm: str, rows: dict) -> list:
  healed = any("healed" in r for r in rows.values())
  columns = ["k", "removed (seed 0)", "accuracy, pruned", "text ppl, pruned", "pruned - unpruned, accuracy"]
  columns += ["accuracy, healed", "text ppl, healed", "healed - unpruned, accuracy", "healed - pruned, accuracy",
              "heal train s"] if healed else []
  columns += ["params", "forward ms"]
  out = [f"{arm}-trained model:", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for k, r in sorted(rows.items(), key=lambda kv: int(kv[0])):
    cells = [k, ",".join(map(str, r["removed"][0])) if k != "0" else "none",
             _cell(r["pruned"]["accuracy"]), _cell(r["pruned"]["text_perplexity"], 2),
             _diff_cell(r["pruned_minus_unpruned"]["accuracy"]) if k != "0" else "-"]
    if healed:
      cells += [_cell(r["healed"]["accuracy"]), _cell(r["healed"]["text_perplexity"], 2),
                _diff_cell(r["healed_minus_unpruned"]["accuracy"]), _diff_cell(r["healed_minus_pruned"]["accuracy"]),
                f"{r['heal_train_s']:.1f}"] if "healed" in r else ["-"] * 5
    cells += [f"{r['num_params']:,}", f"{r['forward_ms']:.1f}"]
    out.append("| " + " | ".join(cells) + " |")
  return out


def draw_plots(out: str, base: dict, stats: dict, pruned: dict, scores: dict) -> list:
  names = ["base"] + list(stats)
  rows = [base] + list(stats.values())
  colors = [plots.REGION if n == "uniform" else plots.PLAIN for n in names]
  files = []
  for metric, title, ylabel in (("accuracy", "Held-out answer accuracy by trained layers", "accuracy"),
                                ("text_perplexity", "Text perplexity by trained layers (lower is better)",
                                 "perplexity")):
    files.append(plots.bar_chart(
        os.path.join(out, f"{metric}_by_strategy.png"), [r[metric]["mean"] for r in rows], colors, labels=names,
        intervals=[(r[metric]["low"], r[metric]["high"]) for r in rows], title=title + " (95% CI)",
        y_label=ylabel, x_label="arm"))
  if pruned:
    for metric, ylabel in (("accuracy", "held-out accuracy"), ("text_perplexity", "text perplexity")):
      series = {}
      for arm, rows_k in pruned.items():
        ks = sorted(rows_k, key=int)
        for stage in ("pruned", "healed"):
          got = [rows_k[k].get(stage) or (rows_k[k]["pruned"] if k == "0" else None) for k in ks]
          if stage == "healed" and all(g is None for g in got[1:]):
            continue
          series[f"{arm}-trained, {stage}"] = {
              "values": [g[metric]["mean"] if g else None for g in got],
              "intervals": [(g[metric]["low"], g[metric]["high"]) if g else None for g in got]}
      files.append(plots.line_chart(
          os.path.join(out, f"{metric}_by_layers_pruned.png"), [int(k) for k in ks], series,
          title=f"{ylabel.capitalize()} after pruning k layers outside the uniform region (95% CI)",
          y_label=ylabel, x_label="layers pruned (k)"))
    for arm, s in scores.items():
      files.append(plots.layer_scores_chart(
          os.path.join(out, f"layer_scores_{arm}.png"), s["scores"], region=s["protected"], removed=s["removed"],
          title=f"{s['metric']} per layer, {arm}-trained model (seed 0); removed at k={len(s['removed'])}",
          y_label=s["metric"]))
  return files


def write_report(out: str, command: str, config, bases: list, arms: dict, pruned: dict) -> dict:
  """study.md, results.json and the plots in `out`; returns the results."""
  base = summary(bases)
  stats = {name: summary(runs) for name, runs in arms.items()}
  runs_of = {"base": bases, **arms}
  comparisons = {f"{a} - {b}": compared(runs_of[a], runs_of[b]) for a, b in COMPARISONS
                 if a in runs_of and b in runs_of}
  prune_rows = {arm: prune_summary(arms[arm], p) for arm, p in pruned.items()}
  scores = {arm: {**{k: p[0][k] for k in ("scores", "metric", "protected")},
                  "removed": p[0]["k"][max(p[0]["k"], key=int)]["removed"]} for arm, p in pruned.items()}
  seeds, questions, texts = len(bases), len(bases[0]["eval_hits"]), len(bases[0]["text_sample_losses"])
  results = {"command": command, "seeds": [config.seed + i for i in range(seeds)], "steps": config.train.steps,
             "lora_rank": config.region.lora_rank, "fraction": config.region.fraction,
             "questions": questions, "text_samples": texts, "heal_steps": config.prune.heal_steps,
             "base": base, "arms": stats, "comparisons": comparisons, "pruned": prune_rows,
             "runs": {"base": bases, "arms": arms, "pruned": pruned}}
  os.makedirs(out, exist_ok=True)
  write_file_atomically(os.path.join(out, "results.json"), json.dumps(results, indent=1))
  files = draw_plots(out, base, stats, prune_rows, scores)
  update = f"LoRA r={config.region.lora_rank}" if config.region.lora_rank else "full update of the trained layers"
  lines = ["# Region study", "", "```", command, "```", "",
           f"{seeds} seeds ({', '.join(map(str, results['seeds']))}), {config.train.steps} steps per arm, {update}, "
           f"region fraction {config.region.fraction}; {questions} held-out questions, {texts} text samples. "
           f"Cells: mean over seeds [95% bootstrap interval over seeds and questions, "
           f"{bootstrap.REPLICATES} replicates].", "", *arms_table(base, arms, stats), "",
           "Paired differences (same seeds, same questions); the verdict says whether the interval excludes 0:",
           "", *comparisons_table(comparisons), "", *benchmarks_table(arms)]
  for arm, rows in prune_rows.items():
    lines += [f"Pruning by {scores[arm]['metric']}, never a layer of the uniform region"
              + (f"; healing: {config.prune.heal_steps} steps of prune.heal_layers="
                 f"{config.prune.heal_layers} at lr {config.prune.heal_lr}" if config.prune.heal_steps else "")
              + ".", "", *prune_table(arm, rows), ""]
  lines += [f"![{os.path.splitext(os.path.basename(f))[0]}]({os.path.basename(f)})" for f in files]
  write_file_atomically(os.path.join(out, "study.md"), "\n".join(lines) + "\n")
  return results
