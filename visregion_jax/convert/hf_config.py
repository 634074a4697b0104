"""HF `config.json` <-> DecoderConfig, with validation that names the bad key.

Reads both transformers 4 (`rope_theta` + `rope_scaling`) and transformers 5
(`rope_parameters`) spellings; writes what the installed transformers 5 writes.
"""

import json
from typing import Optional

from visregion_jax.convert.config_fields import positive_float, positive_int, stored_dtype
from visregion_jax.errors import VisRegionError
from visregion_jax.models.config import ARCHITECTURES, ROPE_TYPES, DecoderConfig

_MODEL_TYPES = {"llama": "llama", "phi3": "phi3"}
_HF_CLASSES = {"llama": "LlamaForCausalLM", "phi3": "Phi3ForCausalLM"}
_ROPE_REQUIRED = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}
# Keys we own on export: every one is rewritten from DecoderConfig.
_OWNED = ("rope_theta", "rope_scaling", "rope_parameters", "torch_dtype", "dtype",
          "partial_rotary_factor")


def _token_ids(value, key: str, where: str) -> tuple:
  ids = [] if value is None else (value if isinstance(value, list) else [value])
  if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
    raise VisRegionError(f"{where}: {key}", f"expected an integer token id or a list of them, got {value!r}")
  return tuple(ids)


def architecture_of(d: dict, where: str) -> str:
  model_type = d.get("model_type")
  if model_type not in _MODEL_TYPES:
    raise VisRegionError(f"{where}: model_type",
                         f"expected one of {sorted(_MODEL_TYPES)}, got {model_type!r}")
  return _MODEL_TYPES[model_type]


def _rope(d: dict, where: str) -> tuple:
  # transformers 5 reads a non-empty `rope_scaling` before `rope_parameters`; so do we.
  key = "rope_scaling" if d.get("rope_scaling") else "rope_parameters"
  params = d.get(key) or {}
  if not isinstance(params, dict):
    raise VisRegionError(f"{where}: {key}", f"expected a mapping, got {params!r}")
  rope_type = params.get("rope_type", params.get("type", "default"))
  if rope_type not in ROPE_TYPES:
    raise VisRegionError(f"{where}: {key}.rope_type", f"expected one of {list(ROPE_TYPES)}, got {rope_type!r}")
  for name in _ROPE_REQUIRED[rope_type]:
    if not isinstance(params.get(name), (int, float)):
      raise VisRegionError(f"{where}: {key}.{name}", f"a number is required for rope_type {rope_type!r}")
  base = d.get("rope_parameters") if isinstance(d.get("rope_parameters"), dict) else {}
  theta = params.get("rope_theta", base.get("rope_theta", d.get("rope_theta", 10000.0)))
  if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
    raise VisRegionError(f"{where}: rope_theta", f"expected a positive number, got {theta!r}")
  partial = params.get("partial_rotary_factor",
                       base.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0)))
  if isinstance(partial, bool) or not isinstance(partial, (int, float)) or not 0 < partial <= 1:
    raise VisRegionError(f"{where}: partial_rotary_factor", f"expected a number in (0, 1], got {partial!r}")
  extra = tuple(sorted((k, v) for k, v in params.items() if k in _ROPE_REQUIRED[rope_type]))
  return rope_type, float(theta), float(partial), extra


def decoder_config_from_hf(d: dict, where: str, *, dtype: str = "float32",
                           param_dtype: Optional[str] = None, source: str = "") -> DecoderConfig:
  """Validates an HF text config dict (a decoder's config.json)."""
  if not isinstance(d, dict):
    raise VisRegionError(where, "expected a JSON object")
  arch = architecture_of(d, where)
  hidden = positive_int(d, "hidden_size", where)
  heads = positive_int(d, "num_attention_heads", where)
  kv_heads = positive_int(d, "num_key_value_heads", where, default=heads)
  if heads % kv_heads:
    raise VisRegionError(f"{where}: num_key_value_heads",
                         f"expected a divisor of num_attention_heads={heads}, got {kv_heads}")
  head_dim = d.get("head_dim")
  if head_dim is None:
    if hidden % heads:
      raise VisRegionError(f"{where}: hidden_size",
                           f"expected a multiple of num_attention_heads={heads}, got {hidden}")
    head_dim = hidden // heads
  head_dim = positive_int({"head_dim": head_dim}, "head_dim", where)
  act = d.get("hidden_act", "silu")
  if act != "silu":
    raise VisRegionError(f"{where}: hidden_act", f"expected 'silu', got {act!r}")
  rope_type, theta, partial, extra = _rope(d, where)
  window = d.get("sliding_window")
  if window is not None and (not isinstance(window, int) or window <= 0):
    raise VisRegionError(f"{where}: sliding_window", f"expected null or a positive integer, got {window!r}")
  eps = positive_float(d, "rms_norm_eps", where, default=1e-6)
  stored = stored_dtype(d, where)
  return DecoderConfig(
      vocab_size=positive_int(d, "vocab_size", where),
      hidden_size=hidden,
      intermediate_size=positive_int(d, "intermediate_size", where),
      num_layers=positive_int(d, "num_hidden_layers", where),
      num_heads=heads,
      num_kv_heads=kv_heads,
      head_dim=head_dim,
      rms_norm_eps=eps,
      rope_theta=theta,
      rope_type=rope_type,
      rope_scaling=extra,
      partial_rotary_factor=partial,
      max_position_embeddings=positive_int(d, "max_position_embeddings", where, default=2048),
      tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
      attention_bias=bool(d.get("attention_bias", False)),
      mlp_bias=bool(d.get("mlp_bias", False)),
      sliding_window=window,
      architecture=arch,
      bos_token_id=(_token_ids(d.get("bos_token_id"), "bos_token_id", where) or (None,))[0],
      eos_token_ids=_token_ids(d.get("eos_token_id"), "eos_token_id", where),
      pad_token_id=(_token_ids(d.get("pad_token_id"), "pad_token_id", where) or (None,))[0],
      dtype=dtype,
      param_dtype=param_dtype or stored,
      hf_config_json=json.dumps(d, sort_keys=True),
      source=source,
  )


def decoder_config_to_hf(config: DecoderConfig) -> dict:
  """The config.json transformers needs to load the decoder we export."""
  assert config.architecture in ARCHITECTURES
  d = {k: v for k, v in json.loads(config.hf_config_json).items() if k not in _OWNED}
  rope = {"rope_type": config.rope_type, "rope_theta": config.rope_theta, **dict(config.rope_scaling)}
  if config.architecture == "phi3" or config.partial_rotary_factor != 1.0:
    rope["partial_rotary_factor"] = config.partial_rotary_factor
  eos = list(config.eos_token_ids)
  d.update(
      architectures=[_HF_CLASSES[config.architecture]],
      model_type=config.architecture,
      vocab_size=config.vocab_size,
      hidden_size=config.hidden_size,
      intermediate_size=config.intermediate_size,
      num_hidden_layers=config.num_layers,
      num_attention_heads=config.num_heads,
      num_key_value_heads=config.num_kv_heads,
      rms_norm_eps=config.rms_norm_eps,
      rope_parameters=rope,
      max_position_embeddings=config.max_position_embeddings,
      tie_word_embeddings=config.tie_word_embeddings,
      hidden_act="silu",
      sliding_window=config.sliding_window,
      bos_token_id=config.bos_token_id,
      eos_token_id=eos[0] if len(eos) == 1 else (eos or None),
      pad_token_id=config.pad_token_id,
      dtype=config.param_dtype,
  )
  if config.architecture == "llama":
    d.update(head_dim=config.head_dim, attention_bias=config.attention_bias, mlp_bias=config.mlp_bias)
  return d
