"""Visual-region training: the loop (`loop.run`), its jitted step, checkpoints, the
model builder and the dry run. `python -m visregion_jax.train` is the command."""
