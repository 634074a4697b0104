"""The exceptions the commands turn into exit statuses.

Every file, config key, checkpoint or data sample that cannot be used raises
`VisRegionError` with a single line `<where>: <what was expected>`; the command
lines print it as `error: <line>` and exit with status 2, so users never have to
read a traceback to learn which file or key is wrong. A run stopped by SIGTERM or
SIGINT raises `Interrupted` after saving its checkpoint; the commands print where to
resume from and exit with 128 + the signal number (143 for SIGTERM, 130 for SIGINT).
"""


class VisRegionError(Exception):
  """Bad input: the message names the file / key / index and what was expected."""

  def __init__(self, where: str, expected: str):
    self.where = str(where)
    self.expected = " ".join(str(expected).split())  # keep it on one line
    super().__init__(f"{self.where}: {self.expected}")


class Interrupted(Exception):
  """A run stopped on a signal at a step boundary, its state saved in `checkpoint`."""

  def __init__(self, signal_name: str, signal_number: int, step: int, checkpoint: str):
    self.signal_name, self.signal_number, self.step, self.checkpoint = signal_name, signal_number, step, checkpoint
    super().__init__(f"stopped by {signal_name} after step {step}; checkpoint {checkpoint}; "
                     "run the same command again to resume")

  @property
  def exit_status(self) -> int:
    return 128 + self.signal_number
