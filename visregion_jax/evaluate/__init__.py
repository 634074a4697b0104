"""Benchmark evaluation of a model; `python -m visregion_jax.evaluate` is the command."""
