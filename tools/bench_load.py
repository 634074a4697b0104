"""The machine a benchmark ran on, and how busy other processes kept it.

Timings on a shared VM are only comparable when nobody else used the cores, so every
benchmark in tools/ reports the CPU model and this load (the library's
visregion_jax.cpu_load.OtherLoad, which pruning's latency report uses too) beside its
ratios.
"""

import platform

from visregion_jax.cpu_load import OtherLoad

__all__ = ["OtherLoad", "cpu_model"]


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"
