"""Rotary position embeddings in HF's rotate-half layout.

Keeping HF's layout (not the interleaved one) makes weight conversion a pure
transpose; the frequencies are computed in float32 exactly as transformers does so
logits agree to float32 rounding, including Llama-3.1's `llama3` frequency scaling.
"""

import math

import jax.numpy as jnp
import numpy as np

from visregion_jax.models.config import DecoderConfig


def inverse_frequencies(config: DecoderConfig) -> np.ndarray:
  """Per-pair rotation frequencies, float32 [rotary_dim // 2]."""
  dim = config.rotary_dim
  exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
  inv_freq = (1.0 / (np.float32(config.rope_theta) ** exponents)).astype(np.float32)
  if config.rope_type == "linear":
    return (inv_freq / np.float32(config.rope_param("factor"))).astype(np.float32)
  if config.rope_type == "llama3":
    return _llama3_frequencies(inv_freq, config)
  return inv_freq


def frequency_factors(config: DecoderConfig) -> np.ndarray:
  """How much each frequency is slowed against unscaled RoPE (default / this config's),
  float32 [rotary_dim // 2]: the divisors llama.cpp reads from a `rope_freqs` tensor."""
  unscaled = inverse_frequencies(config.replace(rope_type="default", rope_scaling=()))
  return (unscaled / inverse_frequencies(config)).astype(np.float32)


def _llama3_frequencies(inv_freq: np.ndarray, config: DecoderConfig) -> np.ndarray:
  """Llama-3.1: long wavelengths slowed by `factor`, a smooth ramp in between."""
  factor = config.rope_param("factor")
  low = config.rope_param("low_freq_factor")
  high = config.rope_param("high_freq_factor")
  context = config.rope_param("original_max_position_embeddings")
  low_freq_wavelen = context / low
  high_freq_wavelen = context / high
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
  smooth = (context / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def rotation(positions: jnp.ndarray, inv_freq: np.ndarray, dtype):
  """cos and sin tables [B, T, rotary_dim] for integer positions [B, T]."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
  angles = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def apply_rotation(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
  """Rotates the first rotary_dim features of x [B, T, heads, head_dim]."""
  rotary_dim = cos.shape[-1]
  rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
  half = rotary_dim // 2
  rotated_half = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
  out = rot * cos[:, :, None, :] + rotated_half * sin[:, :, None, :]
  return jnp.concatenate([out, rest], axis=-1) if rest.shape[-1] else out
