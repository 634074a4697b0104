"""A config's `hook`: a module run around training, named by the config (the demo's
data synthesis and tower pretraining before, its transformers check after), so the
library's loop knows nothing of any one task.

A hook module defines `provides(config)` (the config keys whose paths `prepare` will
create, so validation does not ask for them first), `prepare(config, log)` and
`finish(config, results, log)`.
"""

import importlib

from visregion_jax.errors import VisRegionError


def load_hook(name: str):
  """The hook module `name`, or None for an empty name."""
  if not name:
    return None
  try:
    module = importlib.import_module(name)
  except ImportError as e:
    raise VisRegionError("hook", f"expected an importable module, got {name!r} ({e})") from None
  missing = [f for f in ("provides", "prepare", "finish") if not callable(getattr(module, f, None))]
  if missing:
    raise VisRegionError("hook", f"expected {name!r} to define {', '.join(missing)}")
  return module
