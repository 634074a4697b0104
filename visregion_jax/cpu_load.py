"""How busy other processes keep the machine's cores while we time something.

A timing on a shared machine is only comparable with another when nobody else used
the cores meanwhile: pruning's latency report (prune/latency.py) and the benchmarks in
tools/ read /proc/stat around the timed block and subtract our own CPU time (this
process, its reaped children and its live descendants, such as grain workers). Where
/proc is absent (not Linux), the load is unknown: None.
"""

import os
import time
from typing import Optional


def descendants_cpu_s() -> float:
  """CPU seconds of this process's live descendants (e.g. grain workers), from /proc."""
  parent, cpu = {}, {}
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    parent[int(entry)] = int(fields[1])
    cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
  ours, frontier = set(), {os.getpid()}
  while frontier:
    frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - ours
    ours |= frontier
  return sum(cpu[pid] for pid in ours)


class OtherLoad:
  """Average cores busy with other processes over a `with` block (`cores`): /proc/stat
  minus our own time; None where /proc/stat cannot be read."""

  cores: Optional[float] = None

  def __enter__(self):
    self._start = self._sample()
    return self

  def __exit__(self, *exc):
    end = self._sample()
    if self._start is None or end is None:
      return
    (busy0, ours0, wall0), (busy1, ours1, wall1) = self._start, end
    self.cores = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / max(wall1 - wall0, 1e-9)

  @staticmethod
  def _sample() -> Optional[tuple]:
    try:
      with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
      ours_children = descendants_cpu_s()
    except OSError:
      return None
    user, nice, system, _, _, irq, softirq, steal = fields[:8]
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    t = os.times()
    ours = t.user + t.system + t.children_user + t.children_system + ours_children
    return busy, ours, time.perf_counter()
