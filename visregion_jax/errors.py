"""The one exception type for bad user input.

Every file, config key, checkpoint or data sample that cannot be used raises
`VisRegionError` with a single line `<where>: <what was expected>`; the command
lines print it as `error: <line>` and exit with status 2, so users never have to
read a traceback to learn which file or key is wrong.
"""


class VisRegionError(Exception):
  """Bad input: the message names the file / key / index and what was expected."""

  def __init__(self, where: str, expected: str):
    self.where = str(where)
    self.expected = " ".join(str(expected).split())  # keep it on one line
    super().__init__(f"{self.where}: {self.expected}")
