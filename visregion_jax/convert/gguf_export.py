"""GGUF export of a decoder (Llama, Phi-3): the file llama.cpp and transformers load.

Names come from the same tables as HF export: `hf_tensors` produces each HF tensor
lazily, `GGUF_NAMES` renames it to llama.cpp's name, and Llama's Q/K rows get
llama.cpp's per-head interleaving (the inverse of what GGUF import undoes). Every
tensor's header is written first and its data afterwards, one tensor at a time, so
the peak memory is the model plus one tensor in its GGUF encoding; the file is written
beside its destination and renamed in whole.

Tensor types: `f32`, `f16`, `bf16` (round to nearest even) and `q8_0`. As llama.cpp
does, 1-D tensors (the norms) and `rope_freqs` stay f32 whatever the type; with `q8_0`
a matrix whose rows are not a multiple of Q8_0's 32-value block is written as f16.
"""

import json
import os
import pathlib
import re
from typing import Optional

import numpy as np

from visregion_jax.convert.gguf_file import ROPE_FREQS, ROPE_SCALING_KEY
from visregion_jax.convert.gguf_vocab import add_vocab
from visregion_jax.convert.params import check_all_exported, hf_shapes, hf_tensors, model_params
from visregion_jax.convert.tables import DECODER_TABLES, GGUF_NAMES
from visregion_jax.errors import VisRegionError
from visregion_jax.models import rope
from visregion_jax.models.config import DecoderConfig
from visregion_jax.models.llama import Decoder
from visregion_jax.publish import published_file

TENSOR_TYPES = ("f32", "f16", "bf16", "q8_0")
_PHI3_TOKENS = {"<unk>", "<s>", "</s>", "<|endoftext|>"}


def _ggml_types():
  import gguf  # pylint: disable=import-outside-toplevel
  q, f = gguf.GGMLQuantizationType, gguf.LlamaFileType
  return {"f32": (q.F32, f.ALL_F32), "f16": (q.F16, f.MOSTLY_F16), "bf16": (q.BF16, f.MOSTLY_BF16),
          "q8_0": (q.Q8_0, f.MOSTLY_Q8_0)}


def check_exportable(config: DecoderConfig, where: str) -> None:
  """Refuses, before any weight is read, what llama.cpp's llama / phi3 graphs cannot run."""
  if config.architecture not in GGUF_NAMES:
    raise VisRegionError(f"{where}: architecture", f"expected one of {sorted(GGUF_NAMES)} for GGUF export, "
                         f"got {config.architecture!r}")
  if config.attention_bias or config.mlp_bias:
    raise VisRegionError(f"{where}: attention_bias / mlp_bias", "expected no linear biases for GGUF export")
  if config.architecture == "llama":
    if config.partial_rotary_factor != 1.0:
      raise VisRegionError(f"{where}: partial_rotary_factor", "expected 1.0 for a Llama GGUF, got "
                           f"{config.partial_rotary_factor}")
    if config.sliding_window is not None:
      raise VisRegionError(f"{where}: sliding_window", "expected none for a Llama GGUF (llama.cpp's llama "
                           f"has no sliding window), got {config.sliding_window}")
  elif config.rope_type != "default":
    raise VisRegionError(f"{where}: rope_scaling", f"expected no RoPE scaling for a Phi-3 GGUF (LongRoPE and "
                         f"scaled Phi-3 are not exported), got {config.rope_type!r}")


def default_tensor_type(decoder: Decoder) -> str:
  """The parameters' own dtype where GGUF has it (f32 / f16 / bf16), else f32."""
  dtypes = {str(v.dtype) for v in model_params(decoder).values()}
  return {"float16": "f16", "bfloat16": "bf16"}.get(dtypes.pop(), "f32") if len(dtypes) == 1 else "f32"


def permute_rows(w: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's Q/K row order: per head, the two rotary halves interleaved pair by pair
  (it rotates adjacent pairs; HF rotates halves)."""
  half = w.shape[0] // heads // 2
  return w.reshape(heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_name(hf_name: str, arch: str) -> tuple:
  """(llama.cpp name, permutation) of an HF tensor name, from the one GGUF table."""
  for gguf_pattern, hf_pattern, permute in GGUF_NAMES[arch]:
    match = re.fullmatch(r"(\d+)".join(re.escape(part) for part in hf_pattern.split("{i}")), hf_name)
    if match:
      return gguf_pattern.replace("{i}", match.group(1)) if match.groups() else gguf_pattern, permute
  raise VisRegionError(hf_name, f"expected a tensor with a llama.cpp name for {arch}")


def _storage_type(shape: tuple, tensor_type: str):
  """The GGML type one tensor is stored as (see the module docstring)."""
  types = _ggml_types()
  if len(shape) < 2:
    return types["f32"][0]
  if tensor_type == "q8_0" and shape[-1] % 32:
    return types["f16"][0]
  return types[tensor_type][0]


def _encode(w: np.ndarray, qtype) -> np.ndarray:
  import gguf  # pylint: disable=import-outside-toplevel
  return gguf.quants.quantize(np.ascontiguousarray(w, dtype=np.float32), qtype)


def _stored_shape(shape: tuple, qtype) -> tuple:
  """(numpy shape, numpy dtype) of the encoded tensor, as GGUFWriter's header takes it."""
  import gguf  # pylint: disable=import-outside-toplevel
  q = gguf.GGMLQuantizationType
  if qtype in (q.F32, q.F16):
    return shape, np.dtype(np.float32 if qtype == q.F32 else np.float16)
  return gguf.quants.quant_shape_to_byte_shape(shape, qtype), np.dtype(np.uint8)


def _original_context(config: DecoderConfig) -> int:
  hf = json.loads(config.hf_config_json)
  value = hf.get("original_max_position_embeddings")
  return value if isinstance(value, int) and value > 0 else config.max_position_embeddings


def _model_name(config: DecoderConfig, tokens: list) -> Optional[str]:
  """general.name: the source's file or directory name. llama.cpp gives a model whose name
  contains "phi3" / "phi-3" the token attributes of Phi-3's tokenizer and fails to load it
  when one of those tokens is missing, so such a name is left out for other tokenizers."""
  if not config.source:
    return None
  name = os.path.splitext(os.path.basename(os.path.normpath(config.source)))[0]
  if re.search(r"phi-?3", name.lower()) and not _PHI3_TOKENS <= set(tokens):
    return None
  return name


def _add_metadata(writer, config: DecoderConfig, file_type, name: Optional[str]) -> None:
  import gguf  # pylint: disable=import-outside-toplevel
  if name:
    writer.add_name(name)
  writer.add_context_length(config.max_position_embeddings)
  writer.add_embedding_length(config.hidden_size)
  writer.add_block_count(config.num_layers)
  writer.add_feed_forward_length(config.intermediate_size)
  writer.add_head_count(config.num_heads)
  writer.add_head_count_kv(config.num_kv_heads)
  if config.head_dim * config.num_heads != config.hidden_size:
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
  writer.add_layer_norm_rms_eps(config.rms_norm_eps)
  writer.add_rope_freq_base(config.rope_theta)
  writer.add_rope_dimension_count(config.rotary_dim)
  writer.add_vocab_size(config.vocab_size)
  writer.add_file_type(file_type)
  writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
  if config.rope_type == "linear":
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(config.rope_param("factor"))
  elif config.rope_type == "llama3":
    # llama.cpp reads only the factors (rope_freqs); our import needs the settings back.
    writer.add_string(ROPE_SCALING_KEY, json.dumps({"rope_type": "llama3", **dict(config.rope_scaling)}))
  if config.architecture == "phi3":
    writer.add_rope_scaling_orig_ctx_len(_original_context(config))
    writer.add_sliding_window(config.sliding_window or 0)  # 0: none, as llama.cpp reads it


def _tensor_plan(params: dict, config: DecoderConfig, tensor_type: str) -> list:
  """[(GGUF name, HF shape, permutation, GGML type)] in the order hf_tensors yields."""
  plan = []
  for hf_name, shape, _ in hf_shapes(params, DECODER_TABLES[config.architecture], config, config.num_layers):
    gguf_name, permute = _gguf_name(hf_name, config.architecture)
    plan.append((gguf_name, shape, permute, _storage_type(shape, tensor_type)))
  return plan


def write_gguf(decoder: Decoder, path: str, *, tensor_type: Optional[str] = None) -> str:
  """Writes `decoder` (pruned or not, LoRA merged) and its tokenizer as one GGUF file.

  `tensor_type` is one of TENSOR_TYPES (default: the parameters' dtype, see
  `default_tensor_type`). The tokenizer comes from `decoder.config.source` (gguf_vocab).
  """
  import gguf  # pylint: disable=import-outside-toplevel
  tensor_type = tensor_type or default_tensor_type(decoder)
  if tensor_type not in TENSOR_TYPES:
    raise VisRegionError("--type", f"expected one of {list(TENSOR_TYPES)}, got {tensor_type!r}")
  config = decoder.config.replace(num_layers=len(decoder.layers))
  check_exportable(config, config.source or "model")
  params = model_params(decoder)
  plan = _tensor_plan(params, config, tensor_type)
  _, _, tensors, used = hf_tensors(params, DECODER_TABLES[config.architecture], config, config.num_layers)
  check_all_exported(params, used)
  extra = []
  if config.rope_type == "llama3":
    extra.append((ROPE_FREQS, rope.frequency_factors(config)))

  writer = gguf.GGUFWriter(path=None, arch=config.architecture)
  tokens = add_vocab(writer, config)
  _add_metadata(writer, config, _ggml_types()[tensor_type][1], _model_name(config, tokens))
  for tensor_name, values in extra:
    writer.add_tensor_info(tensor_name, values.shape, values.dtype, values.nbytes)
  for gguf_name, shape, _, qtype in plan:
    stored, dtype = _stored_shape(shape, qtype)
    writer.add_tensor_info(gguf_name, stored, dtype, int(np.prod(stored)) * dtype.itemsize,
                           raw_dtype=None if dtype != np.uint8 else qtype)
  heads = {"heads": config.num_heads, "kv_heads": config.num_kv_heads}
  with published_file(path) as partial:
    try:
      writer.write_header_to_file(path=pathlib.Path(partial))
      writer.write_kv_data_to_file()
      writer.write_ti_data_to_file()
      for _, values in extra:
        writer.write_tensor_data(values)
      for (_, _, permute, qtype), (_, w) in zip(plan, tensors):
        if permute:
          w = permute_rows(w, heads[permute])
        writer.write_tensor_data(_encode(w, qtype))
    finally:
      writer.close()
  return os.path.abspath(path)
