"""Console lines of a run: printed by process 0 only, flushed at once (pod logs)."""

import jax


def log_line(text: str) -> None:
  if jax.process_index() == 0:
    print(text, flush=True)
