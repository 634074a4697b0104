"""What lmms-eval does to every generated answer before a task scores it.

Its command line (`python -m lmms_eval`, default `--reasoning_tags`) cuts reasoning blocks
(`<think>...</think>`, `<analysis>...</analysis>`) out of the text and strips surrounding
whitespace; the tasks' own parsing sees only what is left. Scoring our raw predictions the
same way keeps the numbers equal to what a user of lmms-eval gets, reasoning model or not.
"""

REASONING_TAGS = (("<think>", "</think>"), ("<analysis>", "</analysis>"))


def without_reasoning(text: str) -> str:
  """`text` with each complete reasoning block removed (outermost pairs, left to right); a
  closing tag whose opening tag was in the prompt keeps only what follows the last one."""
  for start_tag, end_tag in REASONING_TAGS:
    while start_tag in text and end_tag in text:
      start = text.find(start_tag)
      end = text.find(end_tag, start)
      if end == -1:  # only a closing tag before the opening one: nothing to cut
        break
      text = text[:start] + text[end + len(end_tag):]
    if end_tag in text and start_tag not in text:
      text = text.rsplit(end_tag, 1)[-1]
  return text.strip()
