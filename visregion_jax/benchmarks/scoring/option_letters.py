"""Reading an option letter out of free text, by the rules lmms-eval's rule-based MMBench uses.

Three readers, tried in this order by mmbench.py: a letter standing as a word or in a
marked form ("B", "(B)", "B.", ":B"), an option's text found in the answer, and lmms-eval's
general multiple-choice extractor, which ranks every letter it finds by how it appears.
"""

_TOKEN_LETTERS = "ABCDE"
# (prefix, suffix) around a letter that make it an answer when exactly one letter has the form.
_MARKED_TOKENS = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""),
                  (":", ","), (":", "."), (":", ")"), (":", ")."))
_API_FAILURE = "Failed to obtain answer via API"  # an answer holding lmms-eval's failure text is not read by word


def letter_as_token(answer: str):
  """The one letter A-E that stands alone as a word (unless "A" may be an article: a bare "A"
  in more than three words) or, failing that, the one letter in a marked form; else None."""
  if _API_FAILURE in answer:
    return None
  words = answer.split()
  bare = [c for c in _TOKEN_LETTERS if c in words]
  if len(bare) == 1 and not ("A" in words and len(words) > 3):
    return bare[0]
  for prefix, suffix in _MARKED_TOKENS:
    marked = [c for c in _TOKEN_LETTERS if prefix + c + suffix in words]
    if len(marked) == 1:
      return marked[0]
  return None


def letter_by_option_text(answer: str, options: dict):
  """The one option (letter -> text) whose text, lower-cased, is inside the answer; else None."""
  answer = answer.lower()
  found = [letter for letter, text in options.items() if str(text).lower() in answer]
  return found[0] if len(found) == 1 else None


_DEFAULT_LETTERS = "ABCDEFGH"
_EDGE_MARKS = (",", ".", "!", "?", ";", ":", "'", '"')
_PHRASES = (
  "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
  "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
  "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
  "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは")
# How a letter appears, most trusted first: the whole answer starts / ends with it, it follows
# an answer phrase, "(B)", "B.", "B:", "B)", "B ", and (only when none of these) anywhere.
_START, _END, _PHRASE, _ANYWHERE = 10, 9, 7, 0
_MARKED_FORMS = (("({})", 6), ("{}.", 5), ("{}:", 4), ("{})", 3), ("{} ", 2))


def _candidates(text: str, letters) -> list:
  """(rank, position, letter) of every way a letter appears in the padded text."""
  found = []
  for form, rank in _MARKED_FORMS:
    for letter in letters:
      marked = form.format(letter)
      if marked in text:
        found.append((rank, text.rfind(marked), letter))
  lowered = text.lower()
  for phrase in _PHRASES:
    at = lowered.find(phrase)
    if at != -1:
      for letter in letters:
        position = text.find(letter, at + len(phrase))
        if position != -1:
          found.append((_PHRASE, position, letter))
  core = text.strip()
  for letter in letters:
    if core.startswith(letter) and (len(core) == 1 or not core[1].isalpha()):
      found.append((_START, 0, letter))
    if core.endswith(letter) and (len(core) == 1 or not core[-2].isalpha()):
      found.append((_END, len(text) - 1, letter))
  return found


def extracted_letter(response: str, letters) -> str:
  """lmms-eval's general extractor: the best-ranked letter, the later one within a rank, or
  "" when the response names none of `letters` (default A-H when there are none)."""
  if not response.strip():
    return ""
  letters = letters or _DEFAULT_LETTERS
  text = response.strip()
  for mark in _EDGE_MARKS:
    text = text.strip(mark)
  text = f" {text} "
  found = _candidates(text, letters) or [(_ANYWHERE, text.rfind(c), c) for c in letters if c in text]
  return max(found, key=lambda f: (f[0], f[1]))[2] if found else ""
