"""XLA's CPU thread count: the cgroup quota read for v1 and v2, the one case set_xla_threads
changes, and that this jaxlib's pool really follows PJRT_NPROC (else setting it would be a no-op)."""

import os
import subprocess
import sys

from visregion_jax import cpu_threads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)


def test_quota_v2_takes_the_smallest_over_ancestors(tmp_path):
  write(tmp_path / "proc", "0::/pod/box\n")
  write(tmp_path / "cg" / "pod" / "cpu.max", "150000 100000\n")
  write(tmp_path / "cg" / "pod" / "box" / "cpu.max", "max 100000\n")
  assert cpu_threads.quota_cpus(str(tmp_path / "proc"), str(tmp_path / "cg")) == 1.5


def test_quota_v1_and_unlimited(tmp_path):
  write(tmp_path / "proc", "5:memory:/box\n4:cpu,cpuacct:/box\n0::/\n")
  write(tmp_path / "cg" / "cpu,cpuacct" / "box" / "cpu.cfs_quota_us", "400000\n")
  write(tmp_path / "cg" / "cpu,cpuacct" / "box" / "cpu.cfs_period_us", "100000\n")
  assert cpu_threads.quota_cpus(str(tmp_path / "proc"), str(tmp_path / "cg")) == 4.0
  write(tmp_path / "cg" / "cpu,cpuacct" / "box" / "cpu.cfs_quota_us", "-1\n")
  assert cpu_threads.quota_cpus(str(tmp_path / "proc"), str(tmp_path / "cg")) is None
  assert cpu_threads.quota_cpus(str(tmp_path / "missing"), str(tmp_path / "cg")) is None


def test_set_xla_threads_only_below_the_affinity_count():
  env = {}
  assert "quota 2.5" in cpu_threads.set_xla_threads(env, affinity=64, quota=2.5)
  assert env == {"PJRT_NPROC": "2"}
  env = {}
  assert "0.5" in cpu_threads.set_xla_threads(env, affinity=64, quota=0.5)
  assert env == {"PJRT_NPROC": "1"}
  env = {}
  assert "default" in cpu_threads.set_xla_threads(env, affinity=2, quota=4.0)
  assert "default" in cpu_threads.set_xla_threads(env, affinity=2, quota=None)
  assert env == {}
  env = {"NPROC": "3"}
  assert "set by the user" in cpu_threads.set_xla_threads(env, affinity=64, quota=2.0)
  assert env == {"NPROC": "3"}


def test_jaxlib_pool_follows_pjrt_nproc():
  code = ("import jax, jax.numpy as jnp; from visregion_jax.cpu_threads import xla_pool_threads; "
          "before = xla_pool_threads(); jnp.ones(2).block_until_ready(); print(before, xla_pool_threads())")
  env = {**os.environ, "PJRT_NPROC": "3", "PYTHONPATH": REPO}
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                        check=True)
  assert done.stdout.split() == ["0", "3"], done.stdout + done.stderr
