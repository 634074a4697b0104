"""What every command line shares: `error: ...` lines and exit status 2 on bad input."""

import argparse
import sys
from typing import Callable

from visregion_jax.errors import VisRegionError

USAGE_ERROR = 2


class ArgumentParser(argparse.ArgumentParser):
  """argparse, but a bad command line is one `error:` line and exit 2, like bad files."""

  def error(self, message):
    print(f"error: {self.prog}: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def run_main(body: Callable[[], object]) -> int:
  """Runs a command; our exception becomes one line on stderr and exit status 2."""
  try:
    body()
  except VisRegionError as e:
    print(f"error: {e}", file=sys.stderr)
    return USAGE_ERROR
  return 0
