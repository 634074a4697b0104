"""Reading MMMU answers, by the rules of MMMU's official evaluation that lmms-eval uses.

A multiple-choice answer gives a letter: "(B)" first, else "B " or "B.", else (in answers of
more than five words) an option's text; with several, the one appearing last wins; with
none, a random letter, as MMMU's own rules guess (here from a seeded generator, so a
re-score gives the same number). An open answer gives a set of candidates: the tail after
the last cue word ("is", "so", "answer", ... and "=" on the last line) of each line, the
numbers in those, each number as a float rounded to 2 places and each text lower-cased.
"""

import re

_EDGE_MARKS = (",", ".", "!", "?", ";", ":", "'")


def choice_letter(response: str, options: list, rng) -> str:
  """The option letter (A, B, ...) an answer names; `rng.choice` guesses when it names none."""
  for mark in _EDGE_MARKS:
    response = response.strip(mark)
  response = f" {response} "
  letters = [chr(ord("A") + i) for i in range(len(options))]
  found = [c for c in letters if f"({c})" in response]
  last = lambda c: response.rfind(f"({c})")
  if not found:
    found = [c for c in letters if f"{c} " in response] or [c for c in letters if f"{c}." in response]
    last = lambda c: response.rfind(f" {c} ")
  if not found and len(response.split()) > 5:
    found = [c for c, text in zip(letters, options) if text.lower() in response.lower()]
    last = lambda c: response.lower().rfind(options[letters.index(c)].lower())
  if not found:
    return rng.choice(letters)
  return max(found, key=last)  # the first of equals, like NumPy's argmax


_NUMBER_FORMS = (
  re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b"),  # with thousands separators
  re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+"),  # scientific
  re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"),  # plain
)
_CUES = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL_TAILS = (":", ",", ".", "!", "?", ";", "'")


def numbers_in(text: str) -> list:
  return [n for form in _NUMBER_FORMS for n in form.findall(text)]


def normalised(text: str) -> list:
  """A float rounded to 2 places when the text (commas removed) is a number, else the text
  lower-cased; a single character as " c" and "c " so it must stand apart to match."""
  text = text.strip()
  try:
    return [round(float(text.replace(",", "")), 2)]
  except ValueError:
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def _key_tails(response: str) -> list:
  """Per line, the shortest non-empty tail after a cue; the whole answer when no line has one.
  (MMMU also splits at ". " before a capital, which cannot happen once lower-cased.)"""
  response = response.strip().strip(".").lower()
  lines = response.split("\n")
  tails = []
  for number, line in enumerate(lines):
    cues = _CUES + ("=",) if number == len(lines) - 1 else _CUES
    shortest = None
    for cue in cues:
      if cue in line:
        tail = line.split(cue)[-1].strip()
        if not shortest or len(tail) < len(shortest):
          shortest = tail
    if shortest and shortest.strip() not in _TRIVIAL_TAILS:
      tails.append(shortest)
  return tails or [response]


def open_candidates(response: str) -> list:
  tails = _key_tails(response)
  texts = tails + [n for tail in tails for n in numbers_in(tail)]
  return list({c for text in texts for c in normalised(text)})
