"""Checked reads of HF `config.json` fields, shared by the decoder and vision configs,
so a bad value is reported the same way (file and key named) wherever it is read."""

from visregion_jax.errors import VisRegionError

STORED_DTYPES = ("float32", "bfloat16", "float16")


def positive_int(d: dict, key: str, where: str, default=None) -> int:
  value = d.get(key, default)
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise VisRegionError(f"{where}: {key}", f"expected a positive integer, got {value!r}")
  return value


def positive_float(d: dict, key: str, where: str, default=None) -> float:
  value = d.get(key, default)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
    raise VisRegionError(f"{where}: {key}", f"expected a positive number, got {value!r}")
  return float(value)


def stored_dtype(d: dict, where: str) -> str:
  """The dtype the checkpoint's weights are stored in (transformers 5 `dtype`, 4 `torch_dtype`)."""
  value = d.get("dtype") or d.get("torch_dtype") or "float32"
  if value not in STORED_DTYPES:
    raise VisRegionError(f"{where}: dtype", f"expected float32, bfloat16 or float16, got {value!r}")
  return value
