"""Device mesh, logical-axis rules and multi-host start-up: one code path for 1 CPU,
simulated CPU devices, a GPU node and a TPU pod.

Parameters carry `logical_axes` metadata (models/); `RULES` maps those names to mesh
axes. A dimension that the mesh axis does not divide stays replicated (tiny test
models, odd vocabularies), and a mesh axis is used at most once per array.
"""

import math
import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from visregion_jax.errors import VisRegionError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
RULES = {"embed": "fsdp", "mlp": "tensor", "heads": "tensor", "kv_heads": "tensor",
         "vocab": "tensor"}


def maybe_initialize_distributed(requested: bool) -> None:
  """`jax.distributed.initialize()` only for a multi-process job: it raises on a single
  host without a coordinator. TPU pods and `JAX_COORDINATOR_ADDRESS` launches qualify."""
  if requested or os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("TPU_WORKER_HOSTNAMES"):
    if jax.distributed.is_initialized():
      return
    # jax reads the coordinator from the environment but not the process count / id.
    count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    kwargs = {}
    if count is not None and index is not None:
      kwargs = {"num_processes": int(count), "process_id": int(index)}
    # CPU processes need a cross-process collectives backend (GPU and TPU have their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple:
  shape = [data, fsdp, tensor]
  names = [f"mesh.{a}" for a in MESH_AXES]
  for name, size in zip(names, shape):
    if not isinstance(size, int) or (size < 1 and size != -1):
      raise VisRegionError(name, f"expected a positive integer or -1, got {size!r}")
  if shape.count(-1) > 1:
    raise VisRegionError("mesh", "at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise VisRegionError("mesh", f"expected the fixed axes ({known}) to divide the {num_devices} devices")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise VisRegionError("mesh", f"expected data*fsdp*tensor = {num_devices} devices, got "
                         f"{shape[0]}*{shape[1]}*{shape[2]}")
  return tuple(shape)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(data, fsdp, tensor, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def partition_spec(shape: tuple, logical_axes, mesh: Mesh) -> PartitionSpec:
  spec, used = [], set()
  for size, name in zip(shape, logical_axes or (None,) * len(shape)):
    axis = RULES.get(name)
    if axis is None or axis in used or size % mesh.shape[axis] or mesh.shape[axis] == 1:
      spec.append(None)
    else:
      spec.append(axis)
      used.add(axis)
  return PartitionSpec(*spec)


def state_shardings(state, mesh: Mesh):
  """A NamedSharding per Variable of an nnx.State, from its logical axes."""
  def sharding(variable):
    value = variable.get_value()
    axes = variable.get_metadata().get("logical_axes")
    spec = partition_spec(tuple(getattr(value, "shape", ())), axes, mesh)
    return variable.replace(NamedSharding(mesh, spec))
  return jax.tree.map(sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def constrain_batch(x):
  """`x` with its leading (batch) dimension split over the batch axes of the mesh in
  context (`jax.set_mesh`, which training sets), when there is one that divides it.

  With FSDP, a layer's input is split by rows and its weights by their embed dimension
  over the same mesh axis; left to itself, XLA's partitioner may gather the rows and
  sum partial products instead of gathering the weights, so every device holds the
  activations of the whole global batch. Pinning the activations to their rows keeps
  each device at its own micro-batch."""
  axes = _row_axes(x.shape[0])
  return jax.lax.with_sharding_constraint(x, PartitionSpec(axes)) if axes else x


def rows_per_device(rows: int) -> int:
  """Rows of a batch of `rows` that one device holds under the mesh in context, as
  constrain_batch splits them (all of them outside a mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  return rows // math.prod(mesh.shape[a] for a in _row_axes(rows))


def _row_axes(rows: int) -> tuple:
  """The batch axes of the mesh in context that split `rows` rows: () outside a mesh
  context or where they do not divide `rows`."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return ()
  axes = tuple(a for a in BATCH_AXES if mesh.shape.get(a, 1) > 1)
  if not axes or rows % math.prod(mesh.shape[a] for a in axes):
    return ()
  return axes


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """This process's numpy batch -> global jax arrays sharded over (data, fsdp)."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
          for k, v in local_batch.items()}


def on_mesh(model: nnx.Module, mesh: Mesh) -> nnx.Module:
  """The model with its arrays placed as training places them: parameters split by
  their logical axes over the mesh, everything else replicated."""
  graphdef, state = nnx.split(model)
  return nnx.merge(graphdef, jax.device_put(state, state_shardings(state, mesh)))


def local_rows(x: jax.Array, mesh: Mesh) -> np.ndarray:
  """This process's rows of a global array split over (data, fsdp): the inverse of
  `global_batch` for one array."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  spec = PartitionSpec(BATCH_AXES, *([None] * (x.ndim - 1)))
  return np.asarray(multihost_utils.global_array_to_host_local_array(x, mesh, spec))


def gathered_to_host(model: nnx.Module) -> nnx.Module:
  """The model with every array readable whole by this process, for writing it out.

  Arrays sharded over other hosts' devices are all-gathered into host memory, so on
  a multi-host job every process must call this (it is a collective); arrays this
  process can already read whole are left where they are (the writer fetches them
  one at a time).
  """
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  def to_host(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return x

  graphdef, state = nnx.split(model)
  return nnx.merge(graphdef, jax.tree.map(to_host, state))
