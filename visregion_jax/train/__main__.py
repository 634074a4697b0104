"""`python -m visregion_jax.train --config configs/NAME.py [--config.KEY=VALUE ...]`

Trains the visual region of a vision-language model: the projector and a sparse,
uniform set of decoder layers (fully or through LoRA) are updated, everything else
stays frozen. Writes WORKDIR/metrics.jsonl, WORKDIR/checkpoints/ (resumed when run
again on the same workdir), WORKDIR/region.json and, with train.export_hf,
WORKDIR/hf/ (llava-hf, LoRA merged). `--config.dry_run=True` prints the per-device
memory of the config's mesh without loading weights. A config's `hook` module runs
before and after training (the demo writes its data and pretrains its tower there).
"""

import sys

from visregion_jax import cli
from visregion_jax.console import log_line
from visregion_jax.hooks import load_hook
from visregion_jax.train import dry_run, loop
from visregion_jax.train.validate import validate


def train(config) -> dict:
  """The command's work: a dry run, or validation, the hook's prepare, training and the
  hook's finish."""
  if config.get("dry_run"):
    return dry_run.report(config)
  hook = load_hook(config.get("hook", ""))
  validate(config, hook.provides(config) if hook else ())
  if hook:
    hook.prepare(config, log_line)
  results = loop.run(config)
  if hook:
    hook.finish(config, results, log_line)
  return results


def main(argv=None) -> int:
  return cli.config_command("python -m visregion_jax.train", __doc__, train, argv)


if __name__ == "__main__":
  sys.exit(main())
