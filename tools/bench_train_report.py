"""The results of bench_train_step.py: one row per timed step, the goals as ratios, the footnotes,
and with --profile each step's top ops.

Apart from the measuring so that what a column means (and the goal it is checked
against) is read in one place.
"""

import os

from bench_jax_step import FLOP_FORMULA, model_flops
from bench_measure import DenseMatmul

GOALS = {"step": 0.55, "opt": 0.30, "torch": 1.0, "torch_region": 1.0, "lora": 0.85}
_BUSY_WARN = 0.25  # cores used by other processes above which timings are suspect


def result_rows(variants: dict, torch_runs: dict, torch_threads: list, timers: dict, args) -> list:
  """The table's rows: each JAX variant, then each PyTorch run per thread count.

  PyTorch rows take the FLOPs of the JAX variant of the same kind, so that their
  FLOP/s compare the same work.
  """
  rows = []
  for name, v in variants.items():
    rows.append(dict(name=name, timer=timers[name], flops=model_flops(v, args.batch, args.length),
                     opt=v.opt_bytes, xla_peak=v.memory.get("peak"), xla_temp=v.memory.get("temp"),
                     trainable=v.trainable_params))
  same_flops = {kind: next((r["flops"] for r in rows if r["name"] == kind), None) for kind in torch_runs}
  for kind, run in torch_runs.items():
    for n in torch_threads:
      rows.append(dict(name=f"torch {kind} {n}t", timer=timers[f"torch {kind} {n}t"], flops=same_flops[kind],
                       opt=run.opt_bytes, xla_peak=None, xla_temp=None,
                       trainable=sum(p.numel() for p in run.trainable)))
  return rows


def print_matmul(matmul: DenseMatmul, args, others: float) -> None:
  print(f"\ndense fp32 jnp.dot {args.matmul_size}^2, timed {len(matmul.timer.times)} times between "
        f"the steps: best {matmul.peak / 1e9:.1f} GFLOP/s wall, {matmul.peak_per_cpu_s / 1e9:.1f} "
        f"GFLOP per CPU-second; other processes used {others:.2f} of {os.cpu_count()} cores "
        "during the timed rounds")


def _mib(b) -> str:
  return "-" if b is None else f"{b / 2 ** 20:.0f}"


def _rel(a, b) -> str:
  return f"{a / b:.3f}" if a is not None and b else "-"


def _row(r: dict, full, tokens: int, matmul: DenseMatmul) -> str:
  """One table line; the ratio columns are "-" without a full row to divide by."""
  tm, flops = r["timer"], r["flops"]
  return (f"{r['name']:12s} {r['trainable'] / 1e6:8.2f}M {tm.best:6.2f} {tm.median:6.2f} "
          f"{tm.cpu_best:6.2f} {tokens / tm.best:6.0f} "
          f"{_rel(tm.best, full and full['timer'].best):>9s} "
          f"{_rel(tm.cpu_best, full and full['timer'].cpu_best):>8s} "
          f"{(flops or 0) / 1e9:5.0f} {_rel(flops, full and full['flops']):>9s} "
          f"{(flops or 0) / tm.best / 1e9:7.1f} "
          f"{100 * (flops or 0) / tm.cpu_best / matmul.peak_per_cpu_s:5.1f} "
          f"{_mib(r['opt']):>7s} {_rel(r['opt'], full and full['opt']):>8s} "
          f"{_mib(r['xla_peak']):>8s} {_mib(r['xla_temp']):>8s} {_mib(r['timer'].rss_peak):>8s}")


def print_table(rows: list, tokens: int, matmul: DenseMatmul, args) -> None:
  full = next((r for r in rows if r["name"] == "full"), None)
  line = "=" * 132
  print("\n" + line)
  print(f"train step, batch {args.batch} x {args.length} tokens, fp32; best of {args.repeats} rounds; "
        "wall and CPU seconds per step; %peak = (FLOP per CPU-second) / the matmul's; memory in MiB")
  print(f"{'variant':12s} {'trainable':>9s} {'wall s':>6s} {'(med)':>6s} {'cpu s':>6s} {'tok/s':>6s} "
        f"{'wall/full':>9s} {'cpu/full':>8s} {'GFLOP':>5s} {'FLOP/full':>9s} {'GFLOP/s':>7s} "
        f"{'%peak':>5s} {'opt MiB':>7s} {'opt/full':>8s} {'XLA peak':>8s} {'XLA temp':>8s} "
        f"{'RSS step':>8s}")
  for r in rows:
    print(_row(r, full, tokens, matmul))
  print("-" * len(line))
  print_goals(rows)
  print(line)
  print("step times (s): " + "; ".join(f"{r['name']} {[round(t, 2) for t in r['timer'].times]}"
                                       for r in rows))
  print("XLA peak = argument + output - aliased + temp bytes of the compiled step (device.memory_stats() "
        "is None on CPU); RSS step = max VmHWM growth over VmRSS at the start of a timed step "
        "(transient memory only: resident parameters and optimizer state excluded).")


def print_goals(rows: list) -> None:
  """The goal ratios, each where both of its rows were run; PyTorch at its fastest thread count."""
  by = {r["name"]: r for r in rows}
  full = by.get("full")
  if full and "region" in by:
    r = by["region"]
    ratio, cpu_ratio = r["timer"].best / full["timer"].best, r["timer"].cpu_best / full["timer"].cpu_best
    print(f"region / full step time      {ratio:6.3f} wall, {cpu_ratio:.3f} CPU  goal <= {GOALS['step']}: "
          f"{'ok' if ratio <= GOALS['step'] else 'MISSED'} (FLOP ratio {r['flops'] / full['flops']:.3f}: "
          "the floor unless work is skipped)")
    ratio = r["opt"] / full["opt"]
    print(f"region / full optimizer      {ratio:6.3f}  goal <= {GOALS['opt']}: "
          f"{'ok' if ratio <= GOALS['opt'] else 'MISSED'}")
  fastest_torch = {kind: min((r for r in rows if r["name"].startswith(f"torch {kind} ")),
                             key=lambda r: r["timer"].best, default=None) for kind in ("full", "region")}
  if full and fastest_torch["full"]:
    fastest = fastest_torch["full"]
    ratio = fastest["timer"].best / full["timer"].best
    cpu_fastest = min(r["timer"].cpu_best for r in rows if r["name"].startswith("torch full "))
    print(f"JAX / PyTorch full tokens/s  {ratio:6.3f} wall (vs {fastest['name']}), "
          f"{cpu_fastest / full['timer'].cpu_best:.3f} CPU  goal >= {GOALS['torch']}: "
          f"{'ok' if ratio >= GOALS['torch'] else 'MISSED'}")
  if "region" in by and fastest_torch["region"]:
    fastest = fastest_torch["region"]
    ratio = by["region"]["timer"].best / fastest["timer"].best
    print(f"JAX / PyTorch region step    {ratio:6.3f} wall (vs {fastest['name']})  goal <= "
          f"{GOALS['torch_region']}: {'ok' if ratio <= GOALS['torch_region'] else 'MISSED'}")
  if full and "region-lora" in by:
    r = by["region-lora"]
    ratio, median = r["timer"].best / full["timer"].best, r["timer"].median / full["timer"].median
    print(f"region-lora / full step      {ratio:6.3f} wall ({median:.3f} by medians)  goal <= {GOALS['lora']}: "
          f"{'ok' if ratio <= GOALS['lora'] else 'MISSED'} (FLOP ratio {r['flops'] / full['flops']:.3f})")
  if fastest_torch["full"] and fastest_torch["region"]:
    print(f"PyTorch region / full step   {fastest_torch['region']['timer'].best / fastest_torch['full']['timer'].best:6.3f}"
          " wall (each at its fastest thread count)")


def print_footnotes(first, tokens: int, args, others: float) -> None:
  """How the FLOP column is counted, and a warning when other processes skewed the timings."""
  p = first.total_params
  print(f"FLOPs = {FLOP_FORMULA}; T = {tokens} tokens, S = {args.length}, E = "
        f"{first.model_config.text.hidden_size}, L = {first.model_config.text.num_layers}, V = vocabulary "
        "(the terms: forward 2n + "
        "input-gradient 2n for every matmul weight, since the trainable projector lies below all "
        "layers; weight-gradient 2n for trainable ones only). The 6*P*T rule (P = all "
        f"{p / 1e6:.1f} M params) gives {6 * p * tokens / 1e9:.0f} GFLOP.")
  if others > _BUSY_WARN:
    print(f"WARNING: other processes used {others:.2f} cores (> {_BUSY_WARN}) while timing; "
          "wall times are inflated (best-of-N discounts bursts only); the CPU-second columns "
          "are the steadier comparison, except for multi-threaded torch (spinning OpenMP "
          "threads burn CPU while they wait).")


def _tail(text: str, width: int) -> str:
  return text if len(text) <= width else "..." + text[-(width - 3):]


def print_profile(profile, top: int) -> None:
  """One profile (bench_profile.Profile): its `top` ops by self time, the rest summed, its
  time by kind, and the trace files, which hold what the table leaves out. PyTorch's
  tables have no category, shape or source columns: an aten name says what it is."""
  steps_ms = profile.steps * profile.step_ms
  hlo = any(r.category for r in profile.rows)
  width = 36 if hlo else 48

  def line(name, category, ms, share, count, shape="", source="") -> str:
    cells = [f"{_tail(name, width):{width}s}"] + ([f"{_tail(category, 20):20s}"] if hlo else [])
    cells.append(f"{ms:>9s} {share:>6s} {count:>6s}")
    if hlo:
      cells.append(f" {_tail(shape, 20):20s} {_tail(source, 48)}")
    return " ".join(cells).rstrip()

  print(f"\nprofile of {profile.title}: {profile.steps} steps, {profile.step_ms:.1f} ms per step"
        f"{'; ' + profile.note if profile.note else ''}; the ops' self times sum to "
        f"{100 * profile.covered:.1f}% of the steps")
  print(line("op", "category", "total ms", "% step", "count", "shape", "from"))
  for r in profile.rows[:top]:
    print(line(r.name, r.category, f"{r.total_ms:.1f}", f"{100 * r.total_ms / steps_ms:.1f}", str(r.count),
               r.shape, r.source))
  rest = profile.rows[top:]
  if rest:
    ms = sum(r.total_ms for r in rest)
    print(line(f"({len(rest)} more ops)", "", f"{ms:.1f}", f"{100 * ms / steps_ms:.1f}",
               str(sum(r.count for r in rest))))
  categories = profile.by_category()
  if categories:
    print("by kind (a fusion's heaviest op): "
          + ", ".join(f"{c} {100 * ms / steps_ms:.1f}% ({n} ops)" for c, ms, n in categories))
  print("trace: " + ", ".join(profile.files))
