"""Where a benchmark step's time goes: a profile of a few steps, as a table of its top ops.

JAX (`jax_profile`): `jax.profiler.trace` writes TensorBoard's profile under the given
directory (`plugins/profile/<run>/<host>.xplane.pb`, and `<host>.trace.json.gz` beside it,
which Perfetto opens). The table is read back from the `.xplane.pb` with
`jax.profiler.ProfileData` (jaxlib's own reader: no converter to install): every
event with an `hlo_op` stat is one execution of an HLO instruction (a thunk on CPU, a
kernel on an accelerator), and its `hlo_module` and `run_id` stats say which program
and which run. An op's time is its self time (its own events minus the ops nested in
them, as a while loop's body is), summed over the profiled steps; the step is the span
of each run's ops, so "% step" is the share of the time the device worked on the step.
`bench_hlo_ops` names what each instruction holds.

PyTorch (`torch_profile`): `torch.profiler.profile` over the same number of steps,
`key_averages()` by self CPU time (aten ops run their intra-op threads inside the op, so
self CPU time is wall time on the calling thread), the Chrome trace written beside.
"""

import dataclasses
import glob
import os
import time

from bench_hlo_ops import HloOp, hlo_ops, module_name


@dataclasses.dataclass
class OpRow:
  """One op of a profile table: its name, what it is (`category`, e.g. "dot+reduce", and
  the heaviest `kind` in it, "dot"; both empty for PyTorch's, whose names say it), its
  time and executions over all profiled steps, and where it came from (the output shape
  and JAX op name of its heaviest instruction)."""
  name: str
  category: str
  kind: str
  total_ms: float
  count: int
  shape: str = ""
  source: str = ""


@dataclasses.dataclass
class Profile:
  """A profile table: its rows (slowest first), the profiled steps and their time, the files."""
  title: str
  rows: list
  steps: int
  step_ms: float        # per step
  files: list
  note: str = ""

  @property
  def covered(self) -> float:
    """The rows' time over the steps' time: < 1 where the device idled or ran untraced work,
    > 1 where ops overlapped (concurrent thunks on several threads)."""
    return sum(r.total_ms for r in self.rows) / max(self.steps * self.step_ms, 1e-12)

  def by_category(self) -> list:
    """[(kind, total ms, ops)] slowest first; [] where the rows have none (PyTorch's)."""
    totals = {}
    for r in self.rows:
      if not r.kind:
        continue
      ms, n = totals.get(r.kind, (0.0, 0))
      totals[r.kind] = (ms + r.total_ms, n + 1)
    return sorted(((c, ms, n) for c, (ms, n) in totals.items()), key=lambda t: -t[1])


def _op_events(data) -> list:
  """[(line id, name, start ns, duration ns, stats)] of every event with an `hlo_op` stat.

  Device planes where they hold any: there the host plane's events are only launches
  of the kernels the device planes time. On CPU the host plane is all there is.
  """
  device, host = [], []
  for plane in data.planes:
    target = device if plane.name.startswith("/device:") else host
    for index, line in enumerate(plane.lines):
      for event in line.events:
        stats = dict(event.stats)
        if "hlo_op" in stats:
          target.append(((plane.name, index), stats["hlo_op"], event.start_ns, event.duration_ns, stats))
  return device or host


def _self_times(events: list) -> list:
  """[(event, self ns)]: each event's duration minus the op events nested directly in it
  on the same line (a while or conditional thunk holds its body's thunks)."""
  out = []
  by_line = {}
  for e in events:
    by_line.setdefault(e[0], []).append(e)
  for line_events in by_line.values():
    line_events.sort(key=lambda e: (e[2], -e[3]))
    stack = []   # [event, self ns] of the enclosing events
    for e in line_events:
      while stack and e[2] >= stack[-1][0][2] + stack[-1][0][3]:
        out.append(tuple(stack.pop()))
      if stack:
        stack[-1][1] -= e[3]
      stack.append([e, e[3]])
    out += [tuple(s) for s in stack]
  return out


def op_table(xplane_path: str, hlo_text: str) -> tuple:
  """(rows slowest first, steps, ms per step) of the program of `hlo_text` (its compiled,
  optimized HLO) in an `.xplane.pb`, each op named by what it holds (`bench_hlo_ops`).
  Other programs in the trace (a stray device_put, say) are left out."""
  from jax.profiler import ProfileData  # pylint: disable=import-outside-toplevel
  module, ops = module_name(hlo_text), hlo_ops(hlo_text)
  events = [e for e in _op_events(ProfileData.from_file(xplane_path)) if e[4].get("hlo_module") == module]
  spans = {}
  for _, _, start, duration, stats in events:
    run = stats.get("run_id", 0)
    lo, hi = spans.get(run, (start, start + duration))
    spans[run] = (min(lo, start), max(hi, start + duration))
  totals = {}
  for e, self_ns in _self_times(events):
    ns, count = totals.get(e[1], (0.0, 0))
    totals[e[1]] = (ns + self_ns, count + 1)
  rows = []
  for name, (ns, count) in totals.items():
    op = ops.get(name, HloOp("", "?", (), "", ""))
    rows.append(OpRow(name, op.label, op.category, ns / 1e6, count, op.shape, op.op_name))
  rows.sort(key=lambda r: -r.total_ms)
  steps = len(spans)
  step_ms = sum(hi - lo for lo, hi in spans.values()) / 1e6 / max(steps, 1)
  return rows, steps, step_ms


def _newest_xplane(log_dir: str, before: set) -> str:
  found = set(glob.glob(os.path.join(log_dir, "plugins", "profile", "*", "*.xplane.pb"))) - before
  if not found:
    raise RuntimeError(f"jax.profiler.trace wrote no .xplane.pb under {log_dir}")
  return max(found, key=os.path.getmtime)


def jax_profile(title: str, step, steps: int, log_dir: str, hlo_text: str) -> Profile:
  """Profiles `steps` calls of `step` (each blocks until done) into `log_dir`, and its op table."""
  import jax  # pylint: disable=import-outside-toplevel
  os.makedirs(log_dir, exist_ok=True)
  before = set(glob.glob(os.path.join(log_dir, "plugins", "profile", "*", "*.xplane.pb")))
  with jax.profiler.trace(log_dir):
    for _ in range(steps):
      step()
  xplane = _newest_xplane(log_dir, before)
  rows, traced_steps, step_ms = op_table(xplane, hlo_text)
  files = [xplane] + glob.glob(os.path.join(os.path.dirname(xplane), "*.trace.json.gz"))
  return Profile(title, rows, traced_steps, step_ms, files, f"module {module_name(hlo_text)}")


def torch_profile(title: str, step, steps: int, out_dir: str) -> Profile:
  """Profiles `steps` calls of `step` with torch.profiler (CPU), its op table by self CPU time."""
  from torch.profiler import ProfilerActivity, profile  # pylint: disable=import-outside-toplevel
  os.makedirs(out_dir, exist_ok=True)
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    t0 = time.perf_counter()
    for _ in range(steps):
      step()
    wall_ms = (time.perf_counter() - t0) * 1e3
  path = os.path.join(out_dir, "trace.json.gz")
  prof.export_chrome_trace(path)
  rows = [OpRow(e.key, "", "", e.self_cpu_time_total / 1e3, e.count)
          for e in prof.key_averages() if e.self_cpu_time_total > 0]
  rows.sort(key=lambda r: -r.total_ms)
  return Profile(title, rows, steps, wall_ms / steps, [path], "step = wall time under the profiler")
