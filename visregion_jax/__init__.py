"""visregion_jax: train and compress vision-language models through their visual region.

The submodules are imported lazily so `python -m visregion_jax.X` starts fast and
`import visregion_jax` does not pull in transformers.
"""

import importlib

from visregion_jax.errors import VisRegionError

_SUBMODULES = ("convert", "data", "evaluation", "generate", "loading", "models", "plan", "prune",
               "region")


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"visregion_jax.{name}")
  if name == "base_config":
    return importlib.import_module("visregion_jax.config.defaults").base_config
  raise AttributeError(f"module 'visregion_jax' has no attribute {name!r}")


__all__ = ["VisRegionError", "base_config", *_SUBMODULES]
