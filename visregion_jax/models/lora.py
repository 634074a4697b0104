"""Linear layers that can carry LoRA factors, as PEFT defines them.

`nnx.LoRA` has no alpha and no dropout, and folding alpha / r into the factors would
change AdamW's dynamics (its update size ignores gradient scale), so the decoder's
linears are this `Dense`: `kernel` / `bias` keep their paths (name tables and
checkpoints stay valid), and `add_lora` attaches `lora_a` [in, r] (PEFT's
Kaiming-uniform init) and `lora_b` [r, out] (zeros), used as
`y = x W + b + (alpha / r) * dropout(x) A B` (dropout.py: 16 random bits per element).
"""

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from visregion_jax.models.dropout import Dropout


class Dense(nnx.Module):
  def __init__(self, d_in: int, d_out: int, *, use_bias: bool, dtype, param_dtype,
               logical_axes: tuple, rngs: nnx.Rngs):
    self.dtype = dtype
    self.kernel = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (d_in, d_out), param_dtype),
                            logical_axes=logical_axes)
    self.bias = nnx.data(nnx.Param(jnp.zeros((d_out,), param_dtype), logical_axes=logical_axes[1:])
                         if use_bias else None)
    # Data attributes from the start, so attaching LoRA later keeps the pytree layout legal.
    self.lora_a: Optional[nnx.LoRAParam] = nnx.data(None)
    self.lora_b: Optional[nnx.LoRAParam] = nnx.data(None)
    self.lora_dropout: Optional[Dropout] = nnx.data(None)
    self.lora_scale = 0.0

  def add_lora(self, rank: int, alpha: float, dropout: float, rngs: nnx.Rngs,
               param_dtype=jnp.float32) -> None:
    d_in, d_out = self.kernel.shape
    bound = 1.0 / (d_in ** 0.5)
    self.lora_a = nnx.LoRAParam(jax.random.uniform(rngs.params(), (d_in, rank), param_dtype, -bound, bound),
                                logical_axes=(self.kernel.get_metadata()["logical_axes"][0], None))
    self.lora_b = nnx.LoRAParam(jnp.zeros((rank, d_out), param_dtype),
                                logical_axes=(None, self.kernel.get_metadata()["logical_axes"][1]))
    self.lora_dropout = Dropout(dropout, rngs=rngs)
    self.lora_scale = alpha / rank

  @property
  def has_lora(self) -> bool:
    return self.lora_a is not None

  def merged_kernel(self) -> jnp.ndarray:
    """W + (alpha / r) A B, computed in float32 and cast to the kernel's dtype."""
    kernel = self.kernel[...]
    if not self.has_lora:
      return kernel
    delta = self.lora_scale * (self.lora_a[...].astype(jnp.float32) @ self.lora_b[...].astype(jnp.float32))
    return (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)

  def merge_lora(self) -> None:
    """Folds the factors into the kernel and detaches them (a plain linear again)."""
    self.kernel.set_value(self.merged_kernel())
    self.lora_a, self.lora_b, self.lora_dropout = None, None, None
    self.lora_scale = 0.0

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    # The matmuls see [tokens, features]: the weight gradient x^T dy then contracts one
    # axis, which the GEMM reads transposed in place; contracting [B, T] as two axes made
    # XLA:CPU copy every activation into a transposed layout first (BUILD.md, "What the
    # fixes bought").
    lead = x.shape[:-1]
    x = x.astype(self.dtype).reshape(-1, x.shape[-1])
    y = x @ self.kernel[...].astype(self.dtype)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    if self.has_lora:
      # alpha / r scales the rank-r product, not the [tokens, out] one: the same value
      # with r / out of the multiplies, forward and backward.
      low = self.lora_dropout(x) @ self.lora_a[...].astype(self.dtype)
      y = y + (self.lora_scale * low) @ self.lora_b[...].astype(self.dtype)
    return y.reshape(*lead, y.shape[-1])


def lora_linears(model: nnx.Module):
  """(path, Dense) of every Dense that carries LoRA factors."""
  return [(path, m) for path, m in model.iter_modules() if isinstance(m, Dense) and m.has_lora]
