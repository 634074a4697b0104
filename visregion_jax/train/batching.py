"""How a global batch splits over accumulation steps and the mesh: one rule for the
training loop and the dry run."""

from visregion_jax.errors import VisRegionError


def check_batch(train_config, mesh) -> int:
  """The micro-batch rows each device computes at once; a split that does not divide
  evenly is an error naming the key."""
  t = train_config
  for key in ("batch_size", "grad_accum"):
    value = t[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise VisRegionError(f"train.{key}", f"expected a positive integer, got {value!r}")
  if t.batch_size % t.grad_accum:
    raise VisRegionError("train.grad_accum", f"expected a divisor of train.batch_size={t.batch_size}, "
                         f"got {t.grad_accum}")
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  micro = t.batch_size // t.grad_accum
  if micro % shards:
    raise VisRegionError("train.batch_size", f"expected batch_size / grad_accum to be a multiple of "
                         f"mesh data*fsdp = {shards} (the batch is split over those axes), "
                         f"got {t.batch_size} / {t.grad_accum}")
  return micro // shards
