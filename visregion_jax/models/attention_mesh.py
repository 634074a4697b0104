"""A per-device attention kernel run over the device mesh: shard_map over the batch axes
(data, fsdp) and the tensor axis for heads, as the training step lays activations out.

A Pallas kernel is one opaque custom call: left to XLA's partitioner, every device would
all-gather its inputs and run the whole kernel. Attention needs nothing from other rows
or other heads, so under shard_map each device runs the kernel on its own rows and
heads, with no communication. The mesh is the one in context (`jax.set_mesh`, which the
training loop sets); without one, the kernel runs on the arrays as given. A dimension
the mesh axes do not divide (tiny test models, an odd evaluation batch) stays whole on
each device: the same numbers, computed redundantly.
"""

import math

import jax
from jax.sharding import PartitionSpec

from visregion_jax.sharding import BATCH_AXES

HEAD_AXIS = "tensor"


def layout(mesh_shape: dict, batch: int, heads: int, kv_heads: int) -> tuple:
  """(mesh axes of the batch dimension or None, mesh axis of the heads or None)."""
  sizes = {a: s for a, s in mesh_shape.items() if s > 1}
  batch_axes = tuple(a for a in BATCH_AXES if a in sizes)
  candidates = [batch_axes] + [(a,) for a in batch_axes] if len(batch_axes) > 1 else [batch_axes]
  batch_spec = next((c for c in candidates if c and batch % math.prod(sizes[a] for a in c) == 0), None)
  t = sizes.get(HEAD_AXIS, 1)
  head_spec = HEAD_AXIS if t > 1 and heads % t == 0 and kv_heads % t == 0 else None
  return batch_spec, head_spec


def sharded(kernel, q, k, v, q_segments, kv_segments):
  """kernel(q, k, v, q_segments, kv_segments) on each device's rows and heads."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return kernel(q, k, v, q_segments, kv_segments)
  batch_spec, head_spec = layout(dict(mesh.shape), q.shape[0], q.shape[2], k.shape[2])
  if batch_spec is None and head_spec is None:
    return kernel(q, k, v, q_segments, kv_segments)
  heads = PartitionSpec(batch_spec, None, head_spec, None)
  rows = PartitionSpec(batch_spec, None)
  if q_segments is None:
    run = jax.shard_map(lambda q, k, v: kernel(q, k, v, None, None), mesh=mesh,
                        in_specs=(heads, heads, heads), out_specs=heads, check_vma=False)
    return run(q, k, v)
  run = jax.shard_map(kernel, mesh=mesh, in_specs=(heads, heads, heads, rows, rows), out_specs=heads,
                      check_vma=False)
  return run(q, k, v, q_segments, kv_segments)
