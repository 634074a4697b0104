"""from_hf / to_hf: the HF format of any model we hold, decoder or llava-hf LVLM."""

import os
from typing import Optional

from visregion_jax.convert import tensor_files
from visregion_jax.convert.decoder import decoder_from_hf, decoder_to_hf
from visregion_jax.convert.llava import from_llava_hf, to_llava_hf
from visregion_jax.convert.params import default_compute_dtype
from visregion_jax.models.attention import check_choice
from visregion_jax.models.attention_choice import set_attention
from visregion_jax.models.llama import Decoder
from visregion_jax.publish import published_directory


def from_hf(path: str, *, dtype: Optional[str] = None, param_dtype: Optional[str] = None,
            attention: str = "auto", attention_interpret: bool = False):
  """An HF model directory, `.gguf` file or `smollm2-135m-instruct` -> an NNX model.

  A llava config gives an LVLM, anything else a Decoder. `dtype` is the compute dtype
  (default: fp32 on CPU, bf16 on accelerators); `param_dtype` casts the weights
  (default: keep the stored dtype). `attention` is config `model.attention`
  (models/attention.py), checked before any weight is read; `attention_interpret`
  runs its Pallas kernels in interpret mode (CPU).
  """
  check_choice(attention, attention_interpret, prefix="")
  config_path = os.path.join(str(path), "config.json")
  model = None
  if os.path.isdir(path) and os.path.isfile(config_path):
    d = tensor_files.read_json(config_path)
    if isinstance(d, dict) and d.get("model_type") == "llava":
      model = from_llava_hf(path, d, dtype=dtype or default_compute_dtype(), param_dtype=param_dtype)
  if model is None:
    model = decoder_from_hf(path, dtype=dtype, param_dtype=param_dtype)
  set_attention(model, attention, attention_interpret, prefix="")
  return model


def to_hf(model, out_dir: str, *, max_shard_bytes: int = tensor_files.DEFAULT_MAX_SHARD_BYTES) -> str:
  """Writes config.json, safetensors (dtype kept) and the tokenizer, loadable by transformers.

  A Decoder becomes LlamaForCausalLM / Phi3ForCausalLM, an LVLM llava-hf. A model
  carrying LoRA factors is refused: merge them first (`TrainingPlan.merge_lora`). The
  directory is published whole (publish.py): until the new export is complete, the
  previous one stays as it was; afterwards nothing of it is left.
  """
  write = decoder_to_hf if isinstance(model, Decoder) else to_llava_hf
  with published_directory(out_dir) as partial:
    write(model, partial, max_shard_bytes=max_shard_bytes)
  return os.path.abspath(out_dir)
