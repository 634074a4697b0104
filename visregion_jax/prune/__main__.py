"""`python -m visregion_jax.prune --config configs/NAME.py [--config.KEY=VALUE ...]`:
prunes a region training run's model (see prune/job.py for what it writes)."""

import sys

from visregion_jax import cli
from visregion_jax.prune.job import run


def main(argv=None) -> int:
  return cli.config_command("python -m visregion_jax.prune", __doc__, run, argv)


if __name__ == "__main__":
  sys.exit(main())
