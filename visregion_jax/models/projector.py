"""The vision-to-language projector: `linear` or LLaVA's `mlpNx_gelu`.

`mlp2x_gelu` is linear -> GELU -> linear. The GELU is the exact (erf) one that
PyTorch's nn.GELU and HF's "gelu" compute; jax.nn.gelu defaults to the tanh
approximation, which would drift from every released LLaVA checkpoint.
"""

import re

import jax
import jax.numpy as jnp
from flax import nnx

from visregion_jax.errors import VisRegionError


def projector_depth(projector_type: str) -> int:
  """Number of linear layers: `linear` -> 1, `mlpNx_gelu` -> N."""
  if projector_type == "linear":
    return 1
  match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
  if not match or int(match.group(1)) < 1:
    raise VisRegionError("projector_type", f"expected 'linear' or 'mlpNx_gelu', got {projector_type!r}")
  return int(match.group(1))


class Projector(nnx.Module):
  def __init__(self, projector_type: str, in_features: int, out_features: int, *, bias: bool = True,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    depth = projector_depth(projector_type)
    sizes = [in_features] + [out_features] * depth
    self.linears = nnx.List([
        nnx.Linear(sizes[i], sizes[i + 1], use_bias=bias, dtype=dtype, param_dtype=param_dtype,
                   rngs=rngs, kernel_metadata={"logical_axes": (None, "embed")},
                   bias_metadata={"logical_axes": ("embed",)})
        for i in range(depth)])

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    for i, linear in enumerate(self.linears):
      if i:
        x = jax.nn.gelu(x, approximate=False)
      x = linear(x)
    return x
