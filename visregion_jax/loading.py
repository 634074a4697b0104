"""`load_model(path)`: every model source the library reads, behind one call.

Accepted, in the order they are recognised:
  - a training workdir (`checkpoints/` + `config.json`): the base rebuilt from the
    run's config, its latest trained parameters restored, LoRA merged;
  - a JAX model checkpoint directory (`convert from-hf` output);
  - an original LLaVA / Bunny checkpoint (detected from its config.json, or implied by
    `vision_tower`, `adapter` or `image_token_id`), with a PEFT adapter merged;
  - anything `convert.from_hf` reads: an HF directory (decoder or llava-hf), a `.gguf`
    file, or `smollm2-135m-instruct`.
"""

import os
from typing import Optional

from visregion_jax.convert import jax_checkpoint
from visregion_jax.convert.hf import from_hf
from visregion_jax.convert.llava_original import from_llava_original, is_llava_original
from visregion_jax.train.trained import is_training_workdir, load_trained


def load_model(path: str, *, dtype: Optional[str] = None, param_dtype: Optional[str] = None,
               vision_tower: Optional[str] = None, adapter: Optional[str] = None,
               image_token_id: Optional[int] = None):
  """The NNX model (Decoder or LVLM) stored at `path`; see the module docstring."""
  path = str(path)
  if os.path.isdir(path) and is_training_workdir(path):
    return load_trained(path)
  if jax_checkpoint.is_model_checkpoint(path):
    return jax_checkpoint.read_model(path)
  original = dict(vision_tower=vision_tower, adapter=adapter, image_token_id=image_token_id)
  if any(v is not None for v in original.values()) or is_llava_original(path):
    return from_llava_original(path, dtype=dtype, param_dtype=param_dtype, **original)
  return from_hf(path, dtype=dtype, param_dtype=param_dtype)
