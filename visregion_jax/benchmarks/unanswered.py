"""What a sample whose images cannot be read is recorded as: an answer that is wrong.

A benchmark row with a missing or corrupt image is never dropped (that would raise the
score by leaving out what the model could not see); it is counted and scored as a wrong
answer. An empty prediction is not always wrong: LLaVA's POPE parsing reads "" as
"yes", and MMMU's rule guesses a random letter for a reply that names none. So the
recorded prediction is one that every parsing scores wrong: the opposite of a yes / no
truth, an option letter other than the true one, and "" for short answers (which match
no reference). The line also carries `image_error` with the reason, so a reader of
WORKDIR/eval/<task>.jsonl sees why.
"""

from visregion_jax.benchmarks import tasks

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _other_letter(truth: str) -> str:
  return "B" if str(truth).strip().upper() == "A" else "A"


def wrong_prediction(task: tasks.Task, fields: dict) -> str:
  """A prediction that the task's scorers all count as wrong for this row."""
  answer = fields.get("answer")
  if task.answer == tasks.YES_NO:
    return "No" if str(answer).strip().lower() == "yes" else "Yes"
  if task.answer == tasks.OPTION_LETTER:
    truth = _LETTERS[answer] if isinstance(answer, int) else answer  # ScienceQA: an index
    return _other_letter(truth)
  if task.answer == tasks.MMMU_MIXED and fields.get("question_type") == "multiple-choice":
    return _other_letter(answer)
  return ""
