"""The Llama-family decoder (Llama-2/Vicuna, Llama-3/3.1, SmolLM2, Phi-3) in Flax NNX.

One module tree serves every architecture: Phi-3 differs from Llama only in how HF
stores its weights (fused qkv / gate_up, split by the converter) and in config
values (sliding window, partial rotary). Layers live in an `nnx.List`, so pruning is
list slicing; a layer holds no index of its own, and the KV cache is a list parallel
to the layers, so a sliced model can never read another layer's cache slot.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from visregion_jax.errors import VisRegionError
from visregion_jax.models import attention, rope
from visregion_jax.models.config import DecoderConfig
from visregion_jax.models.dense_attention import make_attention_mask
from visregion_jax.models.elementwise import rms_norm, swiglu
from visregion_jax.models.lora import Dense
from visregion_jax.sharding import constrain_batch

# Logical axis names of every parameter; sharding.py maps them to mesh axes.
EMBED, MLP_AXIS, HEADS, KV_HEADS, VOCAB = "embed", "mlp", "heads", "kv_heads", "vocab"


def _linear(config: DecoderConfig, d_in: int, d_out: int, axes: tuple, bias: bool,
            rngs: nnx.Rngs) -> Dense:
  return Dense(d_in, d_out, use_bias=bias, dtype=config.compute_dtype,
               param_dtype=jnp.dtype(config.param_dtype), logical_axes=axes, rngs=rngs)


class RMSNorm(nnx.Module):
  """Normalizes in float32 and scales in the input dtype, as HF's LlamaRMSNorm."""

  def __init__(self, dim: int, eps: float, param_dtype):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=(EMBED,))

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return rms_norm(x, self.scale[...], self.eps)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  """Keys and values of every layer for incremental decoding.

  `valid` marks slots holding real tokens (left padding stays False); `index` is the
  next slot to write; all samples of a batch advance together.
  """
  keys: list        # per layer [B, S, kv_heads, head_dim]
  values: list
  valid: jnp.ndarray  # [B, S] bool
  index: jnp.ndarray  # int32 scalar

  @classmethod
  def create(cls, config: DecoderConfig, batch: int, length: int, num_layers: Optional[int] = None):
    shape = (batch, length, config.num_kv_heads, config.head_dim)
    n = config.num_layers if num_layers is None else num_layers
    zeros = lambda: jnp.zeros(shape, config.compute_dtype)
    return cls(keys=[zeros() for _ in range(n)], values=[zeros() for _ in range(n)],
               valid=jnp.zeros((batch, length), bool), index=jnp.zeros((), jnp.int32))


def segment_positions(segment_ids: jnp.ndarray) -> jnp.ndarray:
  """Positions that restart at 0 where each packed sample starts: [B, T] int32."""
  t = segment_ids.shape[1]
  slots = jnp.arange(t, dtype=jnp.int32)[None, :]
  starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                            segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  first = jax.lax.cummax(jnp.where(starts, slots, 0), axis=1)
  return slots - first


class Attention(nnx.Module):
  def __init__(self, config: DecoderConfig, rngs: nnx.Rngs):
    self.config = config
    h, d = config.hidden_size, config.head_dim
    bias = config.attention_bias
    self.q_proj = _linear(config, h, config.num_heads * d, (EMBED, HEADS), bias, rngs)
    self.k_proj = _linear(config, h, config.num_kv_heads * d, (EMBED, KV_HEADS), bias, rngs)
    self.v_proj = _linear(config, h, config.num_kv_heads * d, (EMBED, KV_HEADS), bias, rngs)
    self.o_proj = _linear(config, config.num_heads * d, h, (HEADS, EMBED), bias, rngs)

  def __call__(self, x, cos, sin, masking: attention.Masking, kv: Optional[tuple] = None, index=None):
    """x [B, T, E]; kv: this layer's (keys, values) cache, written at `index`."""
    b, t, _ = x.shape
    d = self.config.head_dim
    q = self.q_proj(x).reshape(b, t, self.config.num_heads, d)
    k = self.k_proj(x).reshape(b, t, self.config.num_kv_heads, d)
    v = self.v_proj(x).reshape(b, t, self.config.num_kv_heads, d)
    q = rope.apply_rotation(q, cos, sin)
    k = rope.apply_rotation(k, cos, sin)
    if kv is not None:
      k = jax.lax.dynamic_update_slice_in_dim(kv[0], k.astype(kv[0].dtype), index, axis=1)
      v = jax.lax.dynamic_update_slice_in_dim(kv[1], v.astype(kv[1].dtype), index, axis=1)
      kv = (k, v)
    out = attention.attend(q, k.astype(q.dtype), v.astype(q.dtype), masking, scale=d ** -0.5)
    return self.o_proj(out.reshape(b, t, -1)), kv


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, config: DecoderConfig, rngs: nnx.Rngs):
    h, m, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
    self.gate_proj = _linear(config, h, m, (EMBED, MLP_AXIS), bias, rngs)
    self.up_proj = _linear(config, h, m, (EMBED, MLP_AXIS), bias, rngs)
    self.down_proj = _linear(config, m, h, (MLP_AXIS, EMBED), bias, rngs)

  def __call__(self, x):
    return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


class DecoderLayer(nnx.Module):
  def __init__(self, config: DecoderConfig, rngs: nnx.Rngs):
    pdt = jnp.dtype(config.param_dtype)
    self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, pdt)
    self.self_attn = Attention(config, rngs)
    self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, pdt)
    self.mlp = MLP(config, rngs)

  def __call__(self, x, cos, sin, masking, kv=None, index=None):
    attn, kv = self.self_attn(self.input_layernorm(x), cos, sin, masking, kv, index)
    x = x + attn
    return x + self.mlp(self.post_attention_layernorm(x)), kv


@dataclasses.dataclass
class DecoderOutput:
  logits: Optional[jnp.ndarray]        # [B, T, V], [B, 1, V] for logits="last", or None
  hidden_states: Optional[list] = None  # L + 1 arrays [B, T, E]: embeddings, then each layer's output
  cache: Optional[KVCache] = None
  final_hidden: Optional[jnp.ndarray] = None  # [B, T, E] after the final norm, for logits="hidden"


def _run_layer(layer, x, cos, sin, masking, kv, index):
  return layer(x, cos, sin, masking, kv, index)


def _run_layer_rematerialized(layer, x, cos, sin, masking, kv, index):
  """The layer under `jax.checkpoint`: its backward recomputes the layer from its input.

  The layer goes in and out as split state rather than through `nnx.remat`, because
  the training step merges the model inside its own trace (params are traced
  values there) and `nnx.remat` writes every variable back, which NNX refuses across
  trace levels. Only non-parameter state (dropout RNG counters) is written back.
  """
  del kv, index  # no cache while training
  graphdef, state = nnx.split(layer)

  def run(state, x, cos, sin, masking):
    inner = nnx.merge(graphdef, state)
    out, _ = inner(x, cos, sin, masking)
    return out, nnx.state(inner, nnx.Not(nnx.Param))

  out, rest = jax.checkpoint(run)(state, x, cos, sin, masking)
  nnx.update(layer, rest)
  return out, None


class Decoder(nnx.Module):
  """A causal language model: token embeddings, decoder layers, final norm, LM head."""

  def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
    self.config = config
    pdt = jnp.dtype(config.param_dtype)
    self.embed_tokens = nnx.Embed(
        config.vocab_size, config.hidden_size, dtype=config.compute_dtype, param_dtype=pdt,
        embedding_init=nnx.with_metadata(nnx.initializers.normal(0.02), logical_axes=(VOCAB, EMBED)),
        rngs=rngs)
    self.layers = nnx.List([DecoderLayer(config, rngs) for _ in range(config.num_layers)])
    self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, pdt)
    if not config.tie_word_embeddings:
      self.lm_head = _linear(config, config.hidden_size, config.vocab_size, (EMBED, VOCAB), False, rngs)

  def __call__(self, input_ids: jnp.ndarray, attention_mask: Optional[jnp.ndarray] = None
               ) -> jnp.ndarray:
    """int32 [B, T] -> logits [B, T, V]."""
    return self.forward(input_ids, attention_mask=attention_mask).logits

  def validate(self, input_ids) -> None:
    """Token ids must index the vocabulary (checked when not traced): a gather would clamp."""
    if isinstance(input_ids, jax.core.Tracer):
      return
    ids = np.asarray(input_ids)
    if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
      raise VisRegionError("input_ids", f"expected token ids in [0, {self.config.vocab_size}), "
                           f"got {ids.min()}..{ids.max()}")

  def embed(self, input_ids: jnp.ndarray) -> jnp.ndarray:
    return self.embed_tokens(input_ids).astype(self.config.compute_dtype)

  def forward(self, input_ids: Optional[jnp.ndarray] = None, *,
              inputs_embeds: Optional[jnp.ndarray] = None,
              attention_mask: Optional[jnp.ndarray] = None,
              positions: Optional[jnp.ndarray] = None,
              segment_ids: Optional[jnp.ndarray] = None,
              cache: Optional[KVCache] = None,
              logits: str = "all",
              hidden_states: bool = False) -> DecoderOutput:
    """The full forward pass.

    attention_mask [B, T] (1 = real token) covers the new tokens; positions default to
    the count of real tokens before each one, so a left-padded prompt is the same
    computation as the unpadded one. `segment_ids` [B, T] (packed rows: 1..n per
    sample, 0 = padding) confine attention to each sample and make positions restart
    per sample, so each sample computes as it would alone. With `cache`, the new tokens are written at
    `cache.index` and attend to everything cached before them (on the XLA path, whatever
    `config.attention` says). `logits` is "all", "last" (decoding), "hidden" (the final
    norm's output instead, for a loss that applies the head itself: tiled_loss.py) or
    "none" (layer scoring, which needs only hidden states).
    """
    cfg = self.config
    if inputs_embeds is None:
      self.validate(input_ids)
    x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(cfg.compute_dtype)
    b, t, _ = x.shape
    new_valid = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
    if segment_ids is not None:
      if cache is not None:
        raise VisRegionError("segment_ids", "expected no KV cache with packed rows (decoding is unpacked)")
      segment_ids = jnp.asarray(segment_ids, jnp.int32)
      new_valid &= segment_ids > 0
      if positions is None:
        positions = segment_positions(segment_ids)
    if positions is None:
      positions = jnp.maximum(jnp.cumsum(new_valid, axis=1) - 1, 0)
      if cache is not None:
        positions = positions + jnp.sum(cache.valid, axis=1, keepdims=True)
    cos, sin = rope.rotation(positions, rope.inverse_frequencies(cfg), cfg.compute_dtype)

    if cache is None:
      index = None
      key_valid = new_valid
    else:
      index = cache.index
      key_valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, new_valid, index, axis=1)
    masking = self.masking(new_valid, key_valid, segment_ids, cache, packed_or_padded=(
        attention_mask is not None or segment_ids is not None))

    run = _run_layer_rematerialized if cfg.remat and cache is None else _run_layer
    states = [x] if hidden_states else None
    new_keys, new_values = [], []
    x = constrain_batch(x)
    for i, layer in enumerate(self.layers):
      kv = None if cache is None else (cache.keys[i], cache.values[i])
      x, kv = run(layer, x, cos, sin, masking, kv, index)
      x = constrain_batch(x)
      if kv is not None:
        new_keys.append(kv[0])
        new_values.append(kv[1])
      if hidden_states:
        states.append(x)

    new_cache = None
    if cache is not None:
      new_cache = KVCache(keys=new_keys, values=new_values, valid=key_valid, index=index + t)
    out_logits = final = None
    if logits == "hidden":
      final = self.norm(x)
    elif logits != "none":
      out_logits = self.lm_logits(self.norm(x[:, -1:] if logits == "last" else x))
    return DecoderOutput(logits=out_logits, hidden_states=states, cache=new_cache, final_hidden=final)

  def masking(self, new_valid, key_valid, segment_ids, cache: Optional[KVCache], packed_or_padded: bool
              ) -> attention.Masking:
    """The XLA path's dense mask (always with a cache), or the fused kernels' segment ids
    (None when no attention_mask or segment_ids came in: every token is real)."""
    cfg = self.config
    impl = "xla" if cache is not None else attention.resolve(cfg.attention, cfg.attention_interpret)
    if impl == "xla":
      t = new_valid.shape[1]
      query_slots = jnp.arange(t) if cache is None else cache.index + jnp.arange(t)
      key_slots = jnp.arange(key_valid.shape[1])
      mask = make_attention_mask(query_slots, key_slots, key_valid, cfg.sliding_window, segment_ids, segment_ids)
      return attention.Masking("xla", causal=True, mask=mask)
    segments = attention.token_segments(new_valid, segment_ids) if packed_or_padded else None
    return attention.Masking(impl, causal=True, window=cfg.sliding_window, interpret=cfg.attention_interpret,
                             q_segments=segments, kv_segments=segments)

  def lm_logits(self, h: jnp.ndarray) -> jnp.ndarray:
    if self.config.tie_word_embeddings:
      return self.embed_tokens.attend(h)
    return self.lm_head(h)

  def lm_head_weight(self) -> tuple:
    """(weight, vocab_major): the matrix `lm_logits` multiplies by, for a loss that applies
    it itself: the tied embedding [V, E] (vocab_major) or the head's kernel [E, V]. The
    head never carries LoRA factors (the plan attaches them to region layers only)."""
    if self.config.tie_word_embeddings:
      return self.embed_tokens.embedding[...], True
    return self.lm_head.kernel[...], False

  def init_cache(self, batch: int, length: int) -> KVCache:
    return KVCache.create(self.config, batch, length, num_layers=len(self.layers))


def build_decoder(config: DecoderConfig, seed: int = 0) -> Decoder:
  return Decoder(config, rngs=nnx.Rngs(seed))


def abstract_decoder(config: DecoderConfig) -> Decoder:
  """A decoder whose parameters are shapes only: the target converters fill in."""
  return nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))

