"""Two training steps of a tiny LVLM with model.attention="splash" or "gpu" (Pallas
interpret mode) equal those with "xla", on one device and on 8 simulated devices (a
2x2x2 data x fsdp x tensor mesh, where the kernel runs under shard_map: one row and
two heads per device); and the 8-device steps equal the one-device ones. The steps run
in one subprocess (tests/run_attention_steps.py): the device count is fixed when jax
starts."""


import numpy as np
import pytest
from conftest import run_on_8_devices

ATOL = 1e-5


@pytest.fixture(scope="module")
def steps():
  return run_on_8_devices("run_attention_steps.py", timeout=600)


def assert_same_steps(got: dict, want: dict) -> None:
  np.testing.assert_allclose(got["losses"], want["losses"], atol=ATOL, rtol=0)
  assert got["params"].keys() == want["params"].keys()
  for path, value in want["params"].items():
    np.testing.assert_allclose(np.asarray(got["params"][path]), np.asarray(value), atol=ATOL, rtol=0,
                               err_msg=path)


@pytest.mark.parametrize("attention", ["splash", "gpu"])
@pytest.mark.parametrize("devices", ["1", "8"])
def test_fused_steps_equal_xla_steps(steps, devices, attention):
  assert_same_steps(steps[devices][attention], steps[devices]["xla"])


@pytest.mark.parametrize("attention", ["splash", "gpu"])
def test_the_kernel_runs_under_shard_map_on_8_devices(steps, attention):
  assert steps["8"][attention]["shard_map"]
  assert not steps["1"][attention]["shard_map"] and not steps["8"]["xla"]["shard_map"]


@pytest.mark.parametrize("attention", ["splash", "gpu"])
def test_fused_on_8_devices_equals_one_device(steps, attention):
  assert_same_steps(steps["8"][attention], steps["1"][attention])
  assert steps["1"]["xla"]["losses"][1] != steps["1"]["xla"]["losses"][0]  # the first step changed something
