"""Mesh shapes, logical-axis partition specs, parameter shardings and batch placement.

Specs are checked on an AbstractMesh (only axis sizes matter); placing arrays needs
real devices, so those checks run once in a subprocess with 8 simulated CPU devices
(the device count is fixed when jax starts).
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from visregion_jax import sharding
from visregion_jax.errors import VisRegionError
from visregion_jax.models.config import DecoderConfig
from visregion_jax.models.llama import build_decoder
from visregion_jax.plan import TrainingPlan

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)


def abstract_mesh(data=1, fsdp=2, tensor=2) -> AbstractMesh:
  return AbstractMesh((data, fsdp, tensor), sharding.MESH_AXES)


# --- mesh_shape ---------------------------------------------------------------------------


@pytest.mark.parametrize("axes, devices, want", [
    ((1, -1, 1), 8, (1, 8, 1)),
    ((-1, 2, 2), 8, (2, 2, 2)),
    ((2, 2, -1), 8, (2, 2, 2)),
    ((1, -1, 4), 8, (1, 2, 4)),
    ((2, 1, 4), 8, (2, 1, 4)),
    ((1, -1, 1), 1, (1, 1, 1)),
])
def test_mesh_shape(axes, devices, want):
  assert sharding.mesh_shape(*axes, devices) == want


@pytest.mark.parametrize("axes, devices, where, words", [
    ((0, -1, 1), 8, "mesh.data", "positive integer or -1"),
    ((1, -2, 1), 8, "mesh.fsdp", "positive integer or -1"),
    ((1, -1, 2.0), 8, "mesh.tensor", "2.0"),
    ((1, -1, "2"), 8, "mesh.tensor", "'2'"),
    ((-1, -1, 1), 8, "mesh", "at most one"),
    ((1, -1, 3), 8, "mesh", "fixed axes (3) to divide the 8 devices"),
    ((2, 2, 1), 8, "mesh", "= 8 devices, got 2*2*1"),
    ((2, 2, 4), 8, "mesh", "got 2*2*4"),
])
def test_bad_mesh_shape(axes, devices, where, words):
  with pytest.raises(VisRegionError) as e:
    sharding.mesh_shape(*axes, devices)
  assert e.value.where == where and words in e.value.expected


# --- partition_spec -----------------------------------------------------------------------

# (shape, logical axes, mesh (data, fsdp, tensor), spec). A dimension the mesh axis does
# not divide, or a mesh axis of size 1, stays replicated; a mesh axis is used once.
SPECS = [
    ((64, 96), ("embed", "mlp"), (1, 2, 2), P("fsdp", "tensor")),
    ((96, 64), ("mlp", "embed"), (1, 2, 2), P("tensor", "fsdp")),
    ((64, 64), ("embed", "heads"), (1, 2, 2), P("fsdp", "tensor")),
    ((64, 32), ("embed", "kv_heads"), (1, 2, 2), P("fsdp", "tensor")),
    ((64, 32), ("heads", "embed"), (1, 2, 2), P("tensor", "fsdp")),
    ((128, 64), ("vocab", "embed"), (1, 2, 2), P("tensor", "fsdp")),
    ((64, 128), ("embed", "vocab"), (1, 2, 2), P("fsdp", "tensor")),
    ((64,), ("embed",), (1, 2, 2), P("fsdp")),
    ((64, 8), ("embed", None), (1, 2, 2), P("fsdp", None)),
    ((8, 64), (None, "heads"), (1, 2, 2), P(None, "tensor")),
    ((3, 7), None, (1, 2, 2), P(None, None)),
    ((), (), (1, 2, 2), P()),
    # not divisible: odd vocabulary, 1 kv head of 8 on a 16-way axis, 6-wide mlp on 4
    ((129, 64), ("vocab", "embed"), (1, 2, 2), P(None, "fsdp")),
    ((64, 129), ("embed", "vocab"), (1, 2, 2), P("fsdp", None)),
    ((63,), ("embed",), (1, 2, 2), P(None)),
    ((64, 8), ("embed", "kv_heads"), (1, 1, 16), P(None, None)),
    ((64, 6), ("embed", "mlp"), (1, 2, 4), P("fsdp", None)),
    ((6, 64), ("mlp", "embed"), (1, 2, 4), P(None, "fsdp")),
    # a mesh axis of size 1 is never named; data never shards parameters
    ((64, 96), ("embed", "mlp"), (8, 1, 1), P(None, None)),
    ((64, 96), ("embed", "mlp"), (2, 4, 1), P("fsdp", None)),
    # one mesh axis per array: the second "tensor" dimension stays whole
    ((64, 64), ("heads", "mlp"), (1, 2, 2), P("tensor", None)),
    ((64, 64), ("embed", "embed"), (1, 2, 2), P("fsdp", None)),
    # ... but a first dimension it cannot divide leaves it free for the next one
    ((3, 64), ("heads", "mlp"), (1, 2, 2), P(None, "tensor")),
]


@pytest.mark.parametrize("shape, axes, mesh, want", SPECS, ids=[str(i) for i in range(len(SPECS))])
def test_partition_spec(shape, axes, mesh, want):
  assert sharding.partition_spec(shape, axes, abstract_mesh(*mesh)) == want


# --- state_shardings on a tiny decoder with LoRA ------------------------------------------

# vocab 129 is odd: the embedding / LM head keep the vocab dimension whole.
TINY = DecoderConfig(vocab_size=129, hidden_size=64, intermediate_size=96, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=16)
DECODER_SPECS = {
    "embed_tokens.embedding": P(None, "fsdp"),
    "lm_head.kernel": P("fsdp", None),
    "norm.scale": P("fsdp"),
    "input_layernorm.scale": P("fsdp"),
    "post_attention_layernorm.scale": P("fsdp"),
    "self_attn.q_proj.kernel": P("fsdp", "tensor"),
    "self_attn.k_proj.kernel": P("fsdp", "tensor"),
    "self_attn.v_proj.kernel": P("fsdp", "tensor"),
    "self_attn.o_proj.kernel": P("tensor", "fsdp"),
    "mlp.gate_proj.kernel": P("fsdp", "tensor"),
    "mlp.up_proj.kernel": P("fsdp", "tensor"),
    "mlp.down_proj.kernel": P("tensor", "fsdp"),
}


def tiny_decoder_state():
  model = build_decoder(TINY, seed=0)
  TrainingPlan(region_layers=(1,), lora_rank=4, lora_alpha=8.0).prepare(model, seed=0)
  return nnx.state(model, nnx.Param)


def expected_spec(path: str) -> P:
  """LoRA's A [in, r] splits like its kernel's input, B [r, out] like its output."""
  if path.endswith(".lora_a"):
    return P(expected_spec(path[:-len("lora_a")] + "kernel")[0], None)
  if path.endswith(".lora_b"):
    return P(None, expected_spec(path[:-len("lora_b")] + "kernel")[1])
  matches = [spec for suffix, spec in DECODER_SPECS.items() if ("." + path).endswith("." + suffix)]
  assert len(matches) == 1, path
  return matches[0]


def flat_variables(state) -> dict:
  leaves = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
  return {".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): v for path, v in leaves}


def test_state_shardings_of_tiny_decoder():
  mesh = abstract_mesh(1, 2, 2)
  state = tiny_decoder_state()
  got = flat_variables(sharding.state_shardings(state, mesh))
  assert sorted(got) == sorted(flat_variables(state))
  assert any(p.endswith("lora_a") for p in got)
  for path, variable in got.items():
    named = variable.get_value()
    assert named.mesh == mesh and named.spec == expected_spec(path), path
    original = flat_variables(state)[path]  # the Variable type (Param / LoRAParam) and axes survive
    assert type(variable) is type(original)
    assert variable.get_metadata()["logical_axes"] == original.get_metadata()["logical_axes"]


# --- on 8 devices: placement of parameters and of the global batch ------------------------

DEVICE_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
import test_sharding
test_sharding.place_state_on_devices()
test_sharding.place_batch_on_devices()
test_sharding.constrain_activations_to_rows()
print("DEVICE CHECKS OK")
"""


def place_state_on_devices():
  """Each parameter is split as its spec says on a 2x2x2 mesh, and reads back whole."""
  assert jax.device_count() == 8
  mesh = sharding.make_mesh(2, 2, 2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  state = tiny_decoder_state()
  placed = jax.device_put(state, sharding.state_shardings(state, mesh))
  for path, variable in flat_variables(placed).items():
    x, spec = variable.get_value(), expected_spec(path)
    want = tuple(n // (mesh.shape[a] if a else 1) for n, a in zip(x.shape, spec))
    assert {s.data.shape for s in x.addressable_shards} == {want}, (path, want)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(flat_variables(state)[path].get_value()))


def place_batch_on_devices():
  """Rows split 4 ways over (data, fsdp), replicated over tensor; trailing dims whole."""
  mesh = sharding.make_mesh(2, 2, 2)
  local = {"input_ids": np.arange(8 * 5, dtype=np.int32).reshape(8, 5),
           "pixel_values": np.random.RandomState(0).randn(8, 4, 4, 3).astype(np.float32)}
  batch = sharding.global_batch(local, mesh)
  coords = {d: c for c, d in np.ndenumerate(mesh.devices)}
  for key, x in batch.items():
    assert x.shape == local[key].shape
    np.testing.assert_array_equal(np.asarray(x), local[key])
    rows_of_group = {}
    for shard in x.addressable_shards:
      assert shard.data.shape == (2,) + local[key].shape[1:], key
      assert all(s == slice(None) for s in shard.index[1:])
      np.testing.assert_array_equal(np.asarray(shard.data), local[key][shard.index])
      data, fsdp, _ = coords[shard.device]
      rows = tuple(range(*shard.index[0].indices(8)))
      assert rows_of_group.setdefault((data, fsdp), rows) == rows, key  # same rows over tensor
    assert sorted(r for rows in rows_of_group.values() for r in rows) == list(range(8))


def constrain_activations_to_rows():
  """Inside the mesh context a [B, T, E] activation computed from replicated inputs comes
  out split by rows over (data, fsdp); a batch the axes do not divide, or no mesh in
  context, leaves it to XLA."""
  mesh = sharding.make_mesh(2, 2, 2)
  x = jax.device_put(np.ones((8, 3, 4), np.float32), sharding.replicated(mesh))
  odd = jax.device_put(np.ones((3, 3, 4), np.float32), sharding.replicated(mesh))
  double = jax.jit(lambda x: sharding.constrain_batch(2 * x))
  with jax.set_mesh(mesh):
    assert double(x).sharding.spec[0] == ("data", "fsdp")
    assert double(odd).sharding.is_fully_replicated
  assert double(x).sharding.is_fully_replicated


def test_placement_on_eight_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([REPO] + ([os.environ["PYTHONPATH"]]
                                                 if os.environ.get("PYTHONPATH") else [])))
  run = subprocess.run([sys.executable, "-c", DEVICE_SCRIPT, TESTS], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120, check=False)
  assert run.returncode == 0 and "DEVICE CHECKS OK" in run.stdout, run.stderr[-3000:]
