"""Checked access to a prediction row's fields.

A row is a benchmark row's own fields (named as its Hugging Face dataset names them) plus
`prediction`; a field a scorer needs that is missing or of the wrong type is bad input, one
`where: expected ...` line naming the file, line and field, never a KeyError mid-scoring.
"""

from visregion_jax.errors import VisRegionError

_KINDS = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


def field(row: dict, key: str, where: str, kind, meaning: str):
  """`row[key]`, which must be of `kind`, a type or a tuple of types (an int is never a bool)."""
  if key not in row:
    raise VisRegionError(where, f"expected field {key!r} ({meaning})")
  value = row[key]
  kinds = kind if isinstance(kind, tuple) else (kind,)
  if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
    raise VisRegionError(where, f"expected field {key!r} to be {' or '.join(_KINDS[k] for k in kinds)} "
                         f"({meaning}), got {type(value).__name__}")
  return value


def prediction(row: dict, where: str) -> str:
  """The model's raw generated text (or, for log-likelihood tasks, the option it ranked first)."""
  return field(row, "prediction", where, str, "the model's answer")


def string_list(row: dict, key: str, where: str, meaning: str) -> list:
  """A non-empty list of strings."""
  values = field(row, key, where, list, meaning)
  if not values or not all(isinstance(v, str) for v in values):
    raise VisRegionError(where, f"expected field {key!r} to be a non-empty list of strings ({meaning})")
  return values


def yes_no(row: dict, key: str, where: str, drop: str = "") -> str:
  """A yes/no ground truth, "yes" or "no" once lower-cased, stripped and rid of the characters in `drop`."""
  answer = field(row, key, where, str, "the ground truth, yes or no").lower().strip()
  answer = answer.translate(str.maketrans("", "", drop))
  if answer not in ("yes", "no"):
    raise VisRegionError(where, f"expected field {key!r} to be yes or no, got {row[key]!r}")
  return answer
