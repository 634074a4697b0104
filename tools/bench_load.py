"""The machine a benchmark ran on, and how busy other processes kept it.

Timings on a shared VM are only comparable when nobody else used the cores, so every
benchmark in tools/ reports the CPU model and this load beside its ratios.
"""

import os
import platform
import time


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
  """Average cores busy with other processes over a block: /proc/stat minus our own time
  (this process, its reaped children and its live descendants)."""

  def __enter__(self):
    self._start = self._sample()
    return self

  def __exit__(self, *exc):
    (busy0, ours0, wall0), (busy1, ours1, wall1) = self._start, self._sample()
    self.cores = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (wall1 - wall0)

  @staticmethod
  def _sample() -> tuple:
    with open("/proc/stat", encoding="ascii") as f:
      fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _, _, irq, softirq, steal = fields[:8]
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    t = os.times()
    ours = t.user + t.system + t.children_user + t.children_system + descendants_cpu_s()
    return busy, ours, time.perf_counter()


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"
