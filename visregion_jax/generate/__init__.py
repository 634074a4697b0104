"""Batched decoding with a KV cache (`generate`), and answers through a chat template
(`chat`). `python -m visregion_jax.generate` is the command."""

from visregion_jax.generate.decode import chat, generate

__all__ = ["chat", "generate"]
