"""The peak FLOP/s of one device: the denominator of MFU.

Accelerators JAX names by `device_kind` get their vendor's published dense bf16 peak
per chip (one JAX device is one chip on every kind listed). Anything else (a CPU, an
unlisted accelerator) has no published figure we could trust, so its practical peak
is measured once: a jitted float32 [n, n] @ [n, n], n grown until one product takes
at least 0.2 s, best of a few runs, cached in `$XDG_CACHE_HOME/visregion_jax/peak_flops.json`
(`~/.cache` without XDG_CACHE_HOME) under the CPU model and core count (or the
accelerator's kind). Delete that file to measure again. On CPU the product uses every
thread XLA has, which the process's CPU devices share: the per-device peak is the
measured one over the local device count.

MFU against the bf16 peak is the usual convention even for a run that computes in
float32 on an accelerator; on CPU, where compute is float32 by default, the measured
float32 peak is the fair one.
"""

import dataclasses
import datetime
import json
import os
import platform
import re
import time

import jax
import jax.numpy as jnp

from visregion_jax.publish import write_file_atomically

# Dense bf16 FLOP/s per chip as the vendors publish them. NVIDIA's datasheets print
# tensor-core figures "with sparsity" (2:4 structured); dense is half of those.
TPU_PEAKS = {
    "TPU v4": 275e12,       # Google Cloud TPU docs, "TPU v4": 275 TFLOPs bf16 per chip
    "TPU v5 lite": 197e12,  # Google Cloud TPU docs, "TPU v5e": 197 TFLOPs bf16 per chip
    "TPU v5e": 197e12,
    "TPU v5": 459e12,       # Google Cloud TPU docs, "TPU v5p": 459 TFLOPs bf16 per chip
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,  # Google Cloud TPU docs, "TPU v6e" (Trillium): 918 TFLOPs bf16 per chip
    "TPU v6e": 918e12,
}
# (words of the device kind, FLOP/s), first match wins: the variants before the family.
NVIDIA_PEAKS = (
    (("H100", "PCIe"), 1513e12 / 2),  # NVIDIA H100 Tensor Core GPU datasheet: 1,513 TFLOPS bf16 sparse
    (("H100", "NVL"), 1671e12 / 2),   # same datasheet, H100 NVL: 1,671
    (("H100",), 1979e12 / 2),         # same datasheet, H100 SXM: 1,979
    (("H200", "NVL"), 1671e12 / 2),   # NVIDIA H200 Tensor Core GPU datasheet, H200 NVL: 1,671
    (("H200",), 1979e12 / 2),         # same datasheet, H200 SXM: 1,979
    (("A100",), 312e12),              # NVIDIA A100 Tensor Core GPU datasheet: 312 TFLOPS bf16 dense
)
MIN_SECONDS, MAX_N, RUNS = 0.2, 8192, 3


@dataclasses.dataclass(frozen=True)
class Peak:
  flops_per_sec: float  # per device
  source: str           # where the figure comes from, for the log


def published_peak(device_kind: str):
  """The dense bf16 FLOP/s per chip of a listed device kind, else None."""
  if device_kind in TPU_PEAKS:
    return TPU_PEAKS[device_kind]
  words = set(re.split(r"[\s-]+", device_kind))
  if "NVIDIA" in words:
    for needed, peak in NVIDIA_PEAKS:
      if words.issuperset(needed):
        return peak
  return None


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or "unknown cpu"


def cache_path() -> str:
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "visregion_jax", "peak_flops.json")


def measure_matmul(device) -> tuple:
  """(best FLOP/s, n) of a jitted float32 [n, n] @ [n, n] on `device`."""
  dot = jax.jit(jnp.dot)
  n = 256
  while True:
    a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), jnp.float32), device)
    b = jax.device_put(jax.random.normal(jax.random.key(1), (n, n), jnp.float32), device)
    dot(a, b).block_until_ready()  # compiled and warm
    times = []
    for _ in range(RUNS):
      started = time.perf_counter()
      dot(a, b).block_until_ready()
      times.append(time.perf_counter() - started)
      if times[-1] < MIN_SECONDS and n < MAX_N:
        break  # too short to time well: a bigger product
    if len(times) == RUNS:
      return 2 * n ** 3 / min(times), n
    n *= 2


def measured_peak(device, key: str) -> tuple:
  """(FLOP/s of `device`, how it was had): from the cache when measured before."""
  path = cache_path()
  try:
    with open(path, encoding="utf-8") as f:
      cached = json.load(f)
  except (OSError, ValueError):
    cached = {}
  entry = cached.get(key) if isinstance(cached, dict) else None
  if isinstance(entry, dict) and isinstance(entry.get("flops_per_sec"), (int, float)):
    return float(entry["flops_per_sec"]), f"measured float32 matmul (n={entry.get('n')}), cached in {path}"
  flops, n = measure_matmul(device)
  cached = cached if isinstance(cached, dict) else {}
  cached[key] = {"flops_per_sec": flops, "n": n, "measured": datetime.datetime.now().isoformat(timespec="seconds")}
  try:
    write_file_atomically(path, json.dumps(cached, indent=2, sort_keys=True) + "\n")
    return flops, f"measured float32 matmul (n={n}), cached in {path}"
  except OSError as e:
    return flops, f"measured float32 matmul (n={n}), not cached ({e.strerror}: {path})"


def device_peak() -> Peak:
  """The peak FLOP/s of one of this job's devices (they are all of one kind)."""
  device = jax.devices()[0]
  published = published_peak(device.device_kind)
  if published is not None:
    return Peak(published, f"{device.device_kind}: published dense bf16 peak per chip")
  if device.platform == "cpu":
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    flops, how = measured_peak(device, f"cpu: {cpu_model()} x {cores} cores")
    devices = jax.local_device_count()
    return Peak(flops / devices, f"{cpu_model()} x {cores} cores, {how}, shared by {devices} CPU device(s)")
  flops, how = measured_peak(device, device.device_kind)
  return Peak(flops, f"{device.device_kind}: {how}")
