"""The benchmark's per-op profile (tools/bench_profile.py, bench_hlo_ops.py): tables read
from real traces captured here, and `bench_train_step.py --profile` end to end.

The end-to-end run loads SmolLM2 twice (JAX and PyTorch) and compiles four steps; it takes
minutes on 2 busy CPU cores, so it runs only with VISREGION_SLOW_TESTS=1:
  VISREGION_SLOW_TESTS=1 .venv/bin/python -m pytest tests/test_bench_profile.py
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

import bench_profile  # noqa: E402
from bench_hlo_ops import hlo_ops, module_name  # noqa: E402
from bench_train_report import print_profile  # noqa: E402

STEPS = 3
TRIPS = 4   # iterations of the loop in `matmul_softmax_loop`


@jax.jit
def matmul_softmax_loop(a, b):
  """A matmul + softmax, then a loop of matmuls: a dot in a fusion, elementwise ops, and
  a while thunk whose body's thunks nest inside it in the trace."""
  y = jax.nn.softmax(a @ b, axis=-1)
  return jax.lax.fori_loop(0, TRIPS, lambda i, c: jnp.tanh(c @ b), y).sum()


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
  """(Profile, HLO text) of STEPS calls of matmul_softmax_loop."""
  a = jax.random.normal(jax.random.key(0), (256, 256), jnp.float32)
  b = a * 0.01
  matmul_softmax_loop(a, b).block_until_ready()
  hlo_text = matmul_softmax_loop.lower(a, b).compile().as_text()
  profile = bench_profile.jax_profile("test", lambda: matmul_softmax_loop(a, b).block_until_ready(), STEPS,
                                      str(tmp_path_factory.mktemp("trace")), hlo_text)
  return profile, hlo_text


def test_hlo_ops_name_what_each_fusion_holds(captured):
  _, hlo_text = captured
  assert module_name(hlo_text) == "jit_matmul_softmax_loop"
  ops = hlo_ops(hlo_text)
  dots = [op for op in ops.values() if op.category == "dot"]
  assert dots and all("dot_general" in op.op_name for op in dots)
  assert any(op.shape == "f32[256,256]" for op in dots)
  assert any(op.opcode == "while" for op in ops.values())


def test_jax_table_times_the_dots(captured):
  profile, _ = captured
  assert profile.steps == STEPS and profile.step_ms > 0
  assert profile.rows[0].kind == "dot" and profile.rows[0].total_ms > 0
  by_name = {r.name: r for r in profile.rows}
  loop_dot = [r for r in profile.rows if r.kind == "dot" and "while/body" in r.source]
  assert loop_dot and loop_dot[0].count == STEPS * TRIPS
  loop = next(r for r in profile.rows if r.category == "while")
  assert loop.total_ms < loop_dot[0].total_ms  # self time: the body's thunks are not the loop's
  assert all(r.category != "?" for r in by_name.values())
  assert 0.5 < profile.covered < 1.5
  assert profile.by_category()[0][0] == "dot"
  assert any(f.endswith(".xplane.pb") for f in profile.files)
  assert any(f.endswith(".trace.json.gz") for f in profile.files)
  assert all(os.path.getsize(f) > 0 for f in profile.files)


def test_self_times_subtract_nested_ops():
  line = ("plane", 0)
  events = [(line, "while", 0, 100, {}), (line, "body_a", 10, 30, {}), (line, "body_b", 50, 40, {}),
            (line, "after", 120, 5, {}), (("plane", 1), "other_line", 20, 50, {})]
  self_ns = {e[1]: ns for e, ns in bench_profile._self_times(events)}  # pylint: disable=protected-access
  assert self_ns == {"while": 30, "body_a": 30, "body_b": 40, "after": 5, "other_line": 50}


def test_print_profile(captured, capsys):
  profile, _ = captured
  print_profile(profile, top=2)
  out = capsys.readouterr().out
  assert f"profile of test: {STEPS} steps" in out
  assert "more ops" in out and "by kind" in out and ".xplane.pb" in out
  assert "dot_general" in out


def test_torch_table(tmp_path):
  import torch  # pylint: disable=import-outside-toplevel
  a = torch.randn(128, 128)
  profile = bench_profile.torch_profile("torch test", lambda: torch.softmax(a @ a, dim=-1), 2, str(tmp_path))
  by_name = {r.name: r for r in profile.rows}
  assert by_name["aten::mm"].total_ms > 0 and by_name["aten::mm"].count == 2
  assert profile.steps == 2 and profile.by_category() == []
  assert os.path.getsize(profile.files[0]) > 0


@pytest.mark.skipif(not os.environ.get("VISREGION_SLOW_TESTS"),
                    reason="loads SmolLM2 in JAX and PyTorch and compiles 4 steps (minutes on 2 CPU cores); "
                           "set VISREGION_SLOW_TESTS=1 to run it")
def test_bench_train_step_profile(tmp_path):
  out_dir = tmp_path / "profile"
  done = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools", "bench_train_step.py"), "--layers", "1", "--batch", "1",
       "--length", "52", "--repeats", "1", "--torch-threads", "1", "--matmul-size", "128", "--profile",
       "--profile-steps", "1", "--profile-top", "5", "--profile-dir", str(out_dir)],
      capture_output=True, text=True, cwd=tmp_path, timeout=1200, check=False,
      env={**os.environ, "PYTHONPATH": REPO})
  assert done.returncode == 0, done.stderr[-3000:]
  out = done.stdout
  assert "threads:" in out
  for title in ("full (JAX)", "region (JAX)", "region-lora (JAX)", "projector (JAX)",
                "torch full 1t", "torch region 1t"):
    lines = out.split(f"profile of {title}", 1)[1].split("\nprofile of ", 1)[0].splitlines()
    assert lines[1].split()[:2] == (["op", "category"] if "(JAX)" in title else ["op", "total"]), lines
    rows = lines[2:7]   # --profile-top 5, then the rest summed
    assert len(rows) == 5 and lines[7].startswith("("), lines
    assert any(" dot" in r for r in rows) if "(JAX)" in title else "aten::mm" in "".join(rows), lines
  for name in ("full", "region", "region-lora", "projector"):
    assert list((out_dir / name).glob("plugins/profile/*/*.xplane.pb")), name
    assert list((out_dir / name).glob("plugins/profile/*/*.trace.json.gz")), name
  for kind in ("full", "region"):
    assert (out_dir / f"torch-{kind}" / "trace.json.gz").stat().st_size > 0
