"""HF checkpoints (safetensors, legacy .bin, GGUF) <-> visregion_jax NNX models."""

from visregion_jax.convert.hf import from_hf, to_hf
from visregion_jax.convert.tokenizer import load_tokenizer

__all__ = ["from_hf", "to_hf", "load_tokenizer"]
