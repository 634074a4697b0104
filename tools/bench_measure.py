"""What one timed benchmark step costs, and what this machine can do at best.

Wall and CPU seconds and RSS high-water growth per step (`Timed`), beside a dense
fp32 matmul timed in the same rounds (`DenseMatmul`): on a shared VM only ratios
against a reference measured in the same process mean anything. Shared by
bench_train_step.py and bench_data.py.
"""

import os
import platform
import statistics
import time

from bench_load import cpu_model


def header() -> None:
  """The machine lines every JAX benchmark starts with: its numbers mean nothing without them.

  XLA's CPU threads are sized first as the commands size them (cpu_threads.py), so a
  benchmark runs with the commands' threads; the line reports the pool XLA started.
  """
  import jax  # pylint: disable=import-outside-toplevel

  from visregion_jax.cpu_threads import set_xla_threads, xla_pool_threads  # pylint: disable=import-outside-toplevel
  threads = set_xla_threads()
  print(f"machine: {os.cpu_count()} CPUs, {cpu_model()} ({platform.machine()}); "
        f"jax {jax.__version__} ({jax.default_backend()}); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"threads: {threads}; XLA's intra-op pool started with {xla_pool_threads()}")


def status_kib() -> dict:
  """VmRSS / VmHWM of this process in KiB."""
  out = {}
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      key, _, rest = line.partition(":")
      if key in ("VmRSS", "VmHWM"):
        out[key] = int(rest.split()[0])
  return out


def reset_peak_rss() -> bool:
  """Returns freed heap to the OS, then resets VmHWM to the current RSS (Linux >= 4.0).

  Without the trim, a step's temporaries land in pages an earlier step (of another
  variant) freed but glibc kept, and its peak would not show. False where not permitted.
  """
  try:
    import ctypes  # pylint: disable=import-outside-toplevel
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass
  try:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
      f.write("5")
    return True
  except OSError:
    return False


class Timed:
  """Wall and process CPU seconds, and RSS high-water growth, per step of one measured thing.

  CPU seconds (all threads of this process) hardly change when other processes take
  cores away, so they are the steadier measure on a shared machine; wall time is
  what a user waits. Spinning OpenMP threads count as CPU time too.
  """

  def __init__(self, name: str):
    self.name, self.times, self.cpu_times, self.rss_peaks = name, [], [], []

  def run(self, fn):
    can_reset = reset_peak_rss()
    before = status_kib()["VmRSS"]
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    self.times.append(time.perf_counter() - t0)
    self.cpu_times.append(time.process_time() - c0)
    if can_reset:
      self.rss_peaks.append((status_kib()["VmHWM"] - before) * 1024)
    return out

  @property
  def best(self) -> float:
    return min(self.times)  # other load only ever adds time

  @property
  def median(self) -> float:
    return statistics.median(self.times)

  @property
  def cpu_best(self) -> float:
    return min(self.cpu_times)

  @property
  def rss_peak(self):
    return max(self.rss_peaks) if self.rss_peaks else None


class DenseMatmul:
  """A jitted fp32 [n, n] @ [n, n]: this machine's practical peak, timed beside the steps."""

  def __init__(self, n: int):
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    self.flops = 2 * n ** 3
    self.a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    self.b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    self.dot = jax.jit(jnp.dot)
    self.dot(self.a, self.b).block_until_ready()
    self.timer = Timed("matmul")

  def run(self, repeats: int) -> None:
    for _ in range(repeats):
      self.timer.run(lambda: self.dot(self.a, self.b).block_until_ready())

  @property
  def peak(self) -> float:
    """Best FLOP/s of wall time."""
    return self.flops / self.timer.best

  @property
  def peak_per_cpu_s(self) -> float:
    """Best FLOP per CPU second: what one core's worth of time yields."""
    return self.flops / self.timer.cpu_best

