"""The decoder's configuration: one frozen, hashable dataclass.

It is hashable because NNX keeps it as static module data that jit caches on; HF's
free-form config dict is carried as a JSON string so export can write back the keys
we do not model.
"""

import dataclasses
from typing import Optional

import jax.numpy as jnp

ROPE_TYPES = ("default", "linear", "llama3")
ARCHITECTURES = ("llama", "phi3")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_type: str = "default"
  # Extra RoPE parameters (factor, low_freq_factor, ...) as sorted (name, value) pairs.
  rope_scaling: tuple = ()
  partial_rotary_factor: float = 1.0
  max_position_embeddings: int = 2048
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  mlp_bias: bool = False
  sliding_window: Optional[int] = None
  architecture: str = "llama"
  bos_token_id: Optional[int] = None
  eos_token_ids: tuple = ()
  pad_token_id: Optional[int] = None
  dtype: str = "float32"         # compute dtype
  param_dtype: str = "float32"   # dtype new parameters are created in
  remat: bool = False            # recompute each layer in the backward pass
  loss_tiles: int = 0            # the training loss's tiles: 0 = by size, 1 = plain, N (tiled_loss.py)
  attention: str = "auto"        # "auto", "xla", "splash" or "gpu": models/attention.py
  attention_interpret: bool = False  # run the Pallas kernels in interpret mode (CPU tests)
  hf_config_json: str = "{}"     # the HF config this was read from, for export
  source: str = ""               # where it was loaded from; export takes the tokenizer from there

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def rotary_dim(self) -> int:
    return int(self.head_dim * self.partial_rotary_factor)

  def rope_param(self, name: str):
    return dict(self.rope_scaling)[name]

  def replace(self, **changes) -> "DecoderConfig":
    return dataclasses.replace(self, **changes)
