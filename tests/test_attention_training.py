"""Two training steps of a tiny LVLM with model.attention="splash" or "gpu" (Pallas
interpret mode) equal those with "xla", on one device and on 8 simulated devices (a
2x2x2 data x fsdp x tensor mesh, where the kernel runs under shard_map: one row and
two heads per device); and the 8-device steps equal the one-device ones. The steps run
in one subprocess (tests/run_attention_steps.py): the device count is fixed when jax
starts. The kernels' one-device steps are slow tests (VISREGION_SLOW_TESTS=1): in the
default suite one device runs "xla" only, and the fused kernels alone on one device are
test_attention_kernels.py's and test_attention_switch.py's."""

import os

import numpy as np
import pytest
from conftest import run_on_8_devices

ATOL = 1e-5
SLOW = bool(os.environ.get("VISREGION_SLOW_TESTS"))
ONE_DEVICE_KERNELS = pytest.mark.skipif(not SLOW, reason="the kernels' one-device steps add ~2 min of interpret "
                                        "mode on 2 cores; set VISREGION_SLOW_TESTS=1")


@pytest.fixture(scope="module")
def steps():
  return run_on_8_devices("run_attention_steps.py", timeout=600, args=["--one-device-kernels"] if SLOW else [])


def assert_same_steps(got: dict, want: dict) -> None:
  np.testing.assert_allclose(got["losses"], want["losses"], atol=ATOL, rtol=0)
  assert got["params"].keys() == want["params"].keys()
  for path, value in want["params"].items():
    np.testing.assert_allclose(np.asarray(got["params"][path]), np.asarray(value), atol=ATOL, rtol=0,
                               err_msg=path)


@pytest.mark.parametrize("attention", ["splash", "gpu"])
@pytest.mark.parametrize("devices", [pytest.param("1", marks=ONE_DEVICE_KERNELS), "8"])
def test_fused_steps_equal_xla_steps(steps, devices, attention):
  assert_same_steps(steps[devices][attention], steps[devices]["xla"])


@pytest.mark.parametrize("attention", ["splash", "gpu"])
def test_the_kernel_runs_under_shard_map_on_8_devices(steps, attention):
  assert steps["8"][attention]["shard_map"] and not steps["8"]["xla"]["shard_map"]


@ONE_DEVICE_KERNELS
@pytest.mark.parametrize("attention", ["splash", "gpu"])
def test_the_kernel_runs_without_shard_map_on_one_device(steps, attention):
  assert not steps["1"][attention]["shard_map"]


@pytest.mark.parametrize("attention", ["splash", "gpu"])
def test_fused_on_8_devices_equals_xla_on_one_device(steps, attention):
  """Against the one-device reference; with the slow tests, against the kernel's own one-device steps too."""
  assert_same_steps(steps["8"][attention], steps["1"]["xla"])
  if "splash" in steps["1"]:
    assert_same_steps(steps["8"][attention], steps["1"][attention])
  assert steps["1"]["xla"]["losses"][1] != steps["1"]["xla"]["losses"][0]  # the first step changed something
