"""What every command line shares: `error: ...` lines and exit status 2 on bad input,
and `--help` of the config-driven commands."""

import argparse
import sys
from typing import Callable

from visregion_jax.config import base_config, describe_keys, load_config
from visregion_jax.cpu_threads import set_xla_threads
from visregion_jax.errors import Interrupted, VisRegionError

USAGE_ERROR = 2
HELP_FLAGS = ("-h", "--help")


class ArgumentParser(argparse.ArgumentParser):
  """argparse, but a bad command line is one `error:` line and exit 2, like bad files."""

  def error(self, message):
    print(f"error: {self.prog}: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def run_main(body: Callable[[], object]) -> int:
  """Runs a command; bad input becomes one `error:` line on stderr and exit status 2, a
  run stopped by a signal one line saying where to resume and 128 + the signal. XLA's
  CPU threads are sized first (cpu_threads.py), before any computation starts the backend."""
  set_xla_threads()
  try:
    body()
  except VisRegionError as e:
    print(f"error: {e}", file=sys.stderr)
    return USAGE_ERROR
  except Interrupted as e:
    print(str(e), file=sys.stderr, flush=True)
    return e.exit_status
  except OSError as e:  # the world is input too: a full or read-only disk, a path below a file
    where = e.filename or "os"
    print(f"error: {where}: {e.strerror or e} (expected a usable path)", file=sys.stderr)
    return USAGE_ERROR
  return 0


def config_help(prog: str, doc: str, argv: list) -> str:
  """Usage, the command's docstring and every config key with its value and meaning:
  the values of `--config FILE` (and overrides) when given, else the defaults."""
  rest = [a for a in argv if a not in HELP_FLAGS]
  given = any(a == "--config" or a.startswith("--config=") for a in rest)
  config = load_config(rest, prog) if given else base_config()
  return (f"usage: {prog} --config FILE.py [--config.KEY=VALUE ...]\n\n{doc.strip()}\n\n"
          f"config keys (--config.KEY=VALUE overrides one; values of "
          f"{'this config' if given else 'base_config(), the defaults'}):\n{describe_keys(config)}")


def config_command(prog: str, doc: str, body: Callable[[object], object], argv=None) -> int:
  """A command driven by `--config FILE.py [--config.KEY=VALUE ...]`: `--help` prints
  config_help and exits 0; otherwise `body(config)` runs under run_main."""
  argv = sys.argv[1:] if argv is None else list(argv)
  if any(a in HELP_FLAGS for a in argv):
    return run_main(lambda: print(config_help(prog, doc, argv)))
  return run_main(lambda: body(load_config(argv, prog)))
