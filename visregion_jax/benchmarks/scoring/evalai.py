"""The VQA challenge's answer normalisation (EvalAI), as lmms-eval applies it to TextVQA and VQAv2.

A prediction and the human answers are compared only after this: punctuation dropped or
turned into spaces, articles dropped, number words 0-10 turned into digits, contractions
given their apostrophes. Its quirks are kept on purpose, because they move scores: a mark
next to a space (or any text with a comma between digits) is deleted while others become
spaces, and at most 32 periods are removed (lmms-eval passes `re.UNICODE` where `re.sub`
takes its count).
"""

import re

# Marks replaced by "" or " "; the apostrophe, colon, period and others are not among them.
_MARKS = ';/[]"{}()=+\\_-><@`,?!'
_DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d),+(?=\d)")
_PERIOD = re.compile(r"\.(?!\d)")  # a period not followed by a digit ("2.5" keeps its point)
_PERIODS_REMOVED = 32

_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset(("a", "an", "the"))

# The contracted words; each is also reached from its spellings with one apostrophe left out
# ("dont" -> "don't", "couldnt've" and "couldn'tve" -> "couldn't've").
_CONTRACTED = """
  'ow's'at 'twas ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't
  hadn't've hasn't haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am
  might've mightn't mightn't've must've mustn't needn't not've o'clock oughtn't shan't she'd've
  should've shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've
  someone'll someone's something'd something'd've something'll that's there'd there'd've there're
  there's they'd they'd've they'll they're they've wasn't we'd've we've weren't what'll what're
  what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're
  why's won't would've wouldn't wouldn't've y'all y'all'd've y'all'll you'd you'd've you'll you're
  you've""".split()
CONTRACTIONS = {word[:i] + word[i + 1:]: word for word in _CONTRACTED for i, c in enumerate(word) if c == "'"}
CONTRACTIONS["somebody'd"] = "somebodyd"  # the table runs backwards here; kept, since it changes matches


def punctuation(text: str) -> str:
  """Marks removed (next to a space, or anywhere once digits have a comma between them) or
  replaced by a space; then periods not followed by a digit removed."""
  glue = _DIGIT_COMMA_DIGIT.search(text) is not None
  out = text
  for mark in _MARKS:
    next_to_space = mark + " " in text or " " + mark in text
    out = out.replace(mark, "" if next_to_space or glue else " ")
  return _PERIOD.sub("", out, count=_PERIODS_REMOVED)


def digits_and_articles(text: str) -> str:
  """Lower-cased words, number words as digits, articles dropped, contractions completed."""
  words = [_NUMBERS.get(w, w) for w in text.lower().split()]
  return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalise_vqav2(text: str) -> str:
  """lmms-eval's VQAv2 path: tabs and newlines as spaces, then the two steps above."""
  return digits_and_articles(punctuation(text.replace("\n", " ").replace("\t", " ").strip()))


def normalise_textvqa(text: str) -> str:
  """lmms-eval's TextVQA path (the whole EvalAI processor): lower-case, commas and question
  marks deleted and "'s" split off first, then the VQAv2 path."""
  text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
  return normalise_vqav2(text)
