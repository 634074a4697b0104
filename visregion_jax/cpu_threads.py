"""How many threads XLA's CPU client runs, and the one case in which the commands set it.

XLA:CPU (jaxlib 0.10) sizes its intra-op pool (`XLAEigen`: the threads that run dots,
convolutions and YNNPACK fusions) and its client pool when the backend starts: to
`PJRT_NPROC` (or `NPROC`) when set, else to the CPUs of this process's affinity mask
(`sched_getaffinity`), and never below the number of host devices
(`--xla_force_host_platform_device_count`). The mask follows taskset and cpusets
(docker `--cpuset-cpus`, Kubernetes' static CPU manager), so on a bare host or a pinned
container XLA already uses every core it may. It does not follow a CFS quota (docker
`--cpus`, a Kubernetes CPU limit): a 2-CPU quota on a 64-core host would get 64 threads
that burn the quota in a fraction of each period and then stall until the next one.
`set_xla_threads` covers that case alone, before the backend starts (every command calls
it through `cli.run_main`); BUILD.md ("CPU threads") has the measurements and overrides.
"""

import math
import os
from typing import MutableMapping, Optional

THREAD_VARIABLES = ("PJRT_NPROC", "NPROC")  # read by XLA in this order; the first set one wins


def affinity_cpus() -> int:
  """CPUs this process may run on (its affinity mask; the machine's count where there is none)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def _quota_at(directory: str, v1: Optional[str], root: str) -> Optional[float]:
  """CPUs of the CFS quota of one cgroup directory; None where unlimited or unreadable.
  `v1`: the directory the v1 `cpu` controller is mounted at (e.g. "cpu,cpuacct"); None for v2."""
  try:
    if v1 is None:  # cgroup v2: "max 100000" or "200000 100000"
      with open(os.path.join(root + directory, "cpu.max"), encoding="ascii") as f:
        quota, period = f.read().split()[:2]
      return None if quota == "max" else int(quota) / int(period)
    base = os.path.join(root, v1) + directory
    with open(os.path.join(base, "cpu.cfs_quota_us"), encoding="ascii") as f:
      quota = int(f.read())
    with open(os.path.join(base, "cpu.cfs_period_us"), encoding="ascii") as f:
      period = int(f.read())
    return None if quota <= 0 else quota / period
  except (OSError, ValueError):
    return None


def quota_cpus(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> Optional[float]:
  """The smallest CFS quota, in CPUs, over this process's cgroup and its ancestors (v1 or v2);
  None where there is none (or no cgroup file, as off Linux)."""
  try:
    with open(proc_cgroup, encoding="ascii") as f:
      lines = f.read().splitlines()
  except OSError:
    return None
  quotas = []
  for line in lines:  # "0::/path" (v2), "4:cpu,cpuacct:/path" (v1)
    fields = line.split(":", 2)
    if len(fields) != 3:
      continue
    hierarchy, controllers, path = fields
    if hierarchy == "0" and not controllers:
      v1 = None
    elif "cpu" in controllers.split(","):
      v1 = controllers
    else:
      continue
    path = path.rstrip("/")
    while True:
      q = _quota_at(path or "/", v1, root)
      if q is not None:
        quotas.append(q)
      if not path:
        break
      path = path.rsplit("/", 1)[0]
  return min(quotas) if quotas else None


def set_xla_threads(environ: Optional[MutableMapping] = None, affinity: Optional[int] = None,
                    quota: Optional[float] = None) -> str:
  """Sets PJRT_NPROC to the CFS quota (rounded down, at least 1) where that is below the
  affinity count and the user set neither thread variable; returns what XLA will use, in
  words. Only takes effect before the first computation starts XLA's CPU client.

  Rounded down because a pool larger than the quota is throttled for the rest of each
  period as soon as it has spent it, and its threads wait for each other at every op.
  """
  environ = os.environ if environ is None else environ
  affinity = affinity_cpus() if affinity is None else affinity
  quota = quota_cpus() if quota is None else quota
  for name in THREAD_VARIABLES:
    if environ.get(name):
      return f"{environ[name]} XLA CPU threads ({name} set by the user)"
  if quota is not None and quota < affinity:
    threads = max(1, math.floor(quota))
    environ["PJRT_NPROC"] = str(threads)
    return (f"{threads} XLA CPU threads (PJRT_NPROC set from the cgroup CPU quota {quota:g} "
            f"< {affinity} CPUs in the affinity mask)")
  return f"{affinity} XLA CPU threads (XLA's default: the CPUs in the affinity mask)"


def xla_pool_threads() -> Optional[int]:
  """Threads of XLA's intra-op pool in this process now (0 before the CPU backend starts);
  None where /proc cannot be read. What the pool holds, not what was asked for."""
  try:
    tasks = os.listdir("/proc/self/task")
  except OSError:
    return None
  count = 0
  for task in tasks:
    try:
      with open(f"/proc/self/task/{task}/comm", encoding="utf-8", errors="replace") as f:
        count += f.read().startswith("tf_XLAEigen")
    except OSError:
      continue
  return count
