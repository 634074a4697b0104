"""The CLIP / SigLIP vision transformer that LLaVA-style models read image features from.

One module serves both: CLIP adds a class token and a LayerNorm before the encoder,
SigLIP has a biased patch embedding and an attention-pooling head. Layers live in an
`nnx.List`, so LLaVA's feature selection can stop after the last layer it reads.
Images are NHWC (the layout XLA convolves natively); HF's are NCHW.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from visregion_jax.errors import VisRegionError
from visregion_jax.models import attention
from visregion_jax.models.llama import EMBED, HEADS, MLP_AXIS

KINDS = ("clip", "siglip")
FEATURE_STRATEGIES = ("default", "full")

# HF's ACT2FN names -> the exact functions transformers computes.
ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """Hashable for the same reason as DecoderConfig: NNX keeps it as static module data."""
  kind: str  # "clip" | "siglip"
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  image_size: int
  patch_size: int
  num_channels: int = 3
  layer_norm_eps: float = 1e-5
  hidden_act: str = "quick_gelu"
  use_head: bool = False  # SigLIP's attention-pooling head is in the checkpoint
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  attention: str = "auto"  # as DecoderConfig.attention, bidirectional
  attention_interpret: bool = False
  hf_config_json: str = "{}"

  def __post_init__(self):
    if self.kind not in KINDS:
      raise VisRegionError("kind", f"expected one of {list(KINDS)}, got {self.kind!r}")
    if self.hidden_act not in ACTIVATIONS:
      raise VisRegionError("hidden_act",
                           f"expected one of {sorted(ACTIVATIONS)}, got {self.hidden_act!r}")
    if self.hidden_size % self.num_heads:
      raise VisRegionError("hidden_size", f"expected a multiple of num_heads={self.num_heads}, "
                           f"got {self.hidden_size}")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def has_class_token(self) -> bool:
    return self.kind == "clip"

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def num_positions(self) -> int:
    return self.num_patches + int(self.has_class_token)

  def replace(self, **changes) -> "VisionConfig":
    return dataclasses.replace(self, **changes)


def _linear(config: VisionConfig, d_in: int, d_out: int, axes: tuple, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(
      d_in, d_out, use_bias=True, dtype=config.compute_dtype,
      param_dtype=jnp.dtype(config.param_dtype), rngs=rngs,
      kernel_init=nnx.initializers.normal(0.02),
      kernel_metadata={"logical_axes": axes}, bias_metadata={"logical_axes": axes[1:]})


def _layer_norm(config: VisionConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """torch's LayerNorm: statistics in float32 and the two-pass variance E[(x - mean)^2]."""
  return nnx.LayerNorm(
      config.hidden_size, epsilon=config.layer_norm_eps, dtype=config.compute_dtype,
      param_dtype=jnp.dtype(config.param_dtype), use_fast_variance=False, rngs=rngs,
      scale_metadata={"logical_axes": (EMBED,)}, bias_metadata={"logical_axes": (EMBED,)})


def _param(rngs: nnx.Rngs, shape: tuple, config: VisionConfig, axes: tuple) -> nnx.Param:
  init = nnx.initializers.normal(0.02)(rngs.params(), shape, jnp.dtype(config.param_dtype))
  return nnx.Param(init, logical_axes=axes)


class Attention(nnx.Module):
  """Unmasked multi-head attention; `context` gives keys and values (SigLIP's pooling
  head, on the XLA path: one query row)."""

  def __init__(self, config: VisionConfig, rngs: nnx.Rngs):
    self.config = config
    d = config.hidden_size
    self.q_proj = _linear(config, d, d, (EMBED, HEADS), rngs)
    self.k_proj = _linear(config, d, d, (EMBED, HEADS), rngs)
    self.v_proj = _linear(config, d, d, (EMBED, HEADS), rngs)
    self.out_proj = _linear(config, d, d, (HEADS, EMBED), rngs)

  def __call__(self, x: jnp.ndarray, context: Optional[jnp.ndarray] = None,
               masking: Optional[attention.Masking] = None) -> jnp.ndarray:
    context = x if context is None else context
    masking = attention.Masking("xla", causal=False) if masking is None else masking
    heads, d = self.config.num_heads, self.config.head_dim
    q = self.q_proj(x).reshape(*x.shape[:2], heads, d)
    k = self.k_proj(context).reshape(*context.shape[:2], heads, d)
    v = self.v_proj(context).reshape(*context.shape[:2], heads, d)
    out = attention.attend(q, k, v, masking, scale=d ** -0.5)
    return self.out_proj(out.reshape(*x.shape[:2], -1))


class MLP(nnx.Module):
  def __init__(self, config: VisionConfig, rngs: nnx.Rngs):
    self.act = ACTIVATIONS[config.hidden_act]
    self.fc1 = _linear(config, config.hidden_size, config.intermediate_size, (EMBED, MLP_AXIS), rngs)
    self.fc2 = _linear(config, config.intermediate_size, config.hidden_size, (MLP_AXIS, EMBED), rngs)

  def __call__(self, x):
    return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nnx.Module):
  def __init__(self, config: VisionConfig, rngs: nnx.Rngs):
    self.layer_norm1 = _layer_norm(config, rngs)
    self.self_attn = Attention(config, rngs)
    self.layer_norm2 = _layer_norm(config, rngs)
    self.mlp = MLP(config, rngs)

  def __call__(self, x, masking: attention.Masking):
    x = x + self.self_attn(self.layer_norm1(x), masking=masking)
    return x + self.mlp(self.layer_norm2(x))


class PoolingHead(nnx.Module):
  """SigLIP's pooling: a learned probe attends over the tokens, then a residual MLP."""

  def __init__(self, config: VisionConfig, rngs: nnx.Rngs):
    self.probe = _param(rngs, (1, 1, config.hidden_size), config, (None, None, EMBED))
    self.attention = Attention(config, rngs)
    self.layernorm = _layer_norm(config, rngs)
    self.mlp = MLP(config, rngs)

  def __call__(self, x):
    probe = jnp.broadcast_to(self.probe[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    h = self.attention(probe, context=x)
    return (h + self.mlp(self.layernorm(h)))[:, 0]


class VisionTower(nnx.Module):
  def __init__(self, config: VisionConfig, *, rngs: nnx.Rngs):
    self.config = config
    d, p = config.hidden_size, config.patch_size
    self.patch_embedding = nnx.Conv(
        config.num_channels, d, (p, p), strides=(p, p), padding="VALID",
        use_bias=not config.has_class_token, dtype=config.compute_dtype,
        param_dtype=jnp.dtype(config.param_dtype), rngs=rngs,
        kernel_metadata={"logical_axes": (None, None, None, EMBED)},
        bias_metadata={"logical_axes": (EMBED,)})
    if config.has_class_token:
      self.class_embedding = _param(rngs, (d,), config, (EMBED,))
    self.position_embedding = _param(rngs, (config.num_positions, d), config, (None, EMBED))
    if config.has_class_token:
      self.pre_layrnorm = _layer_norm(config, rngs)  # HF's spelling, kept for the tables
    self.layers = nnx.List([EncoderLayer(config, rngs) for _ in range(config.num_layers)])
    self.post_layernorm = _layer_norm(config, rngs)
    if config.use_head:
      self.head = PoolingHead(config, rngs)

  def embed(self, pixel_values: jnp.ndarray) -> jnp.ndarray:
    """NHWC images -> the encoder input [N, num_positions, D]."""
    cfg = self.config
    expected = (cfg.image_size, cfg.image_size, cfg.num_channels)
    if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
      raise VisRegionError("pixel_values", f"expected [N, {', '.join(map(str, expected))}] (NHWC), "
                           f"got {list(pixel_values.shape)}")
    patches = self.patch_embedding(pixel_values.astype(cfg.compute_dtype))
    x = patches.reshape(patches.shape[0], -1, cfg.hidden_size)  # row-major, as HF's flatten(2)
    if cfg.has_class_token:
      cls = self.class_embedding[...].astype(x.dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, cfg.hidden_size)), x], axis=1)
    x = x + self.position_embedding[...].astype(x.dtype)
    return self.pre_layrnorm(x) if cfg.has_class_token else x

  def hidden_states(self, pixel_values: jnp.ndarray, num_layers: Optional[int] = None) -> list:
    """HF's `output_hidden_states`: the encoder input, then each layer's output.

    With `num_layers`, only that many layers run (and num_layers + 1 states return).
    """
    n = len(self.layers) if num_layers is None else num_layers
    x = self.embed(pixel_values)
    cfg = self.config
    masking = attention.Masking(attention.resolve(cfg.attention, cfg.attention_interpret), causal=False,
                                interpret=cfg.attention_interpret)
    states = [x]
    for layer in self.layers[:n]:
      x = layer(x, masking)
      states.append(x)
    return states

  def features(self, pixel_values: jnp.ndarray, feature_layers: tuple,
               strategy: str) -> jnp.ndarray:
    """LLaVA's image features [N, tokens, D * len(layers)]: LlavaModel.get_image_features.

    Layer indices index the (layers + 1)-entry hidden state list as Python does;
    "default" drops the first token of each selected state (for SigLIP too, as HF
    does), "full" keeps every token. Layers after the deepest selected one never run.
    """
    if strategy not in FEATURE_STRATEGIES:
      raise VisRegionError("feature_strategy",
                           f"expected one of {list(FEATURE_STRATEGIES)}, got {strategy!r}")
    total = len(self.layers) + 1
    if not feature_layers or any(not -total <= int(i) < total for i in feature_layers):
      raise VisRegionError("feature_layers", f"expected indices in [{-total}, {total}) of the "
                           f"{total} hidden states, got {list(feature_layers)}")
    indices = [int(i) % total for i in feature_layers]
    states = self.hidden_states(pixel_values, num_layers=max(indices))
    picked = [states[i][:, 1:] if strategy == "default" else states[i] for i in indices]
    return jnp.concatenate(picked, axis=-1)

  def pooled(self, pixel_values: jnp.ndarray) -> jnp.ndarray:
    """HF's `pooler_output` [N, D]: CLIP's normed class token, SigLIP's pooling head."""
    last = self.hidden_states(pixel_values)[-1]
    if self.config.has_class_token:
      return self.post_layernorm(last[:, 0])
    if not self.config.use_head:
      raise VisRegionError("vision_use_head", "this SigLIP tower has no pooling head")
    return self.head(self.post_layernorm(last))


def abstract_vision_tower(config: VisionConfig) -> VisionTower:
  """A tower whose parameters are shapes only: the target converters fill in."""
  return nnx.eval_shape(lambda: VisionTower(config, rngs=nnx.Rngs(0)))
