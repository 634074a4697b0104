"""HF checkpoints (safetensors, legacy .bin, GGUF) <-> visregion_jax NNX models."""

from visregion_jax.convert.hf import from_hf, to_hf
from visregion_jax.convert.llava_original import from_llava_original
from visregion_jax.convert.tokenizer import load_tokenizer

__all__ = ["from_hf", "from_llava_original", "to_hf", "load_tokenizer"]
