"""Benchmark prompts, worded as LLaVA-1.5's evaluation words them (or as lmms-eval does).

A generated task's prompt is one user turn: one image entry per image of the sample,
then the text (`ChatPrompt.messages`, the content-list form data/chat_jinja.py renders
as `<image>\\n` per image before the text, as LLaVA places its image tag). That is the
turn `generate.prompts.encode_chat(tokenizer, [prompt.text], [images])` builds, so the
model's own chat template wraps it. MMLU is scored, not generated: `ChoicePrompt` is
lm-eval-harness's plain 5-shot text and the answer letters whose log-likelihoods are
compared, with no chat template, as lm-eval-harness runs it by default.

Two wordings, which differ on three tasks:
  style "llava" (default): the text of LLaVA-1.5's question files and eval scripts, so
    numbers compare with the paper's. TextVQA lists the OCR tokens ("Reference OCR
    token: ..."), which is worth about 12 points to LLaVA-1.5; MMBench puts the hint and
    each option on their own lines; ScienceQA's text is stripped as model_vqa_science does.
  style "lmms_eval": lmms-eval 0.7.3's default text, so numbers compare with lmms-eval's
    (TextVQA without OCR tokens; MMBench "hint question There are several options: ...").
GQA, VQAv2, POPE, MME, SEED-Bench and MMMU read the same in both up to whitespace
(lmms-eval strips POPE's question; MME keeps a space LLaVA strips where MME doubles it).
MMMU and MMLU have no LLaVA script and follow lmms-eval / lm-eval-harness; MMMU's
`<image i>` placeholders stay in the text and all its images come first, as lmms-eval's
non-interleaved prompt (the one its LLaVA model gets) does.
"""

import ast
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from visregion_jax.benchmarks import tasks
from visregion_jax.errors import VisRegionError

SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."
STYLES = ("llava", "lmms_eval")
_MME_YES_NO = "Please answer yes or no."
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class ChatPrompt:
  """A user turn to generate an answer to: `num_images` images, then `text`."""
  text: str
  num_images: int

  @property
  def messages(self) -> list:
    content = [{"type": "image"} for _ in range(self.num_images)] + [{"type": "text", "text": self.text}]
    return [{"role": "user", "content": content}]


@dataclass(frozen=True)
class ChoicePrompt:
  """A plain-text context (no chat template) and the continuations to score after it;
  the prediction is the continuation with the highest log-likelihood."""
  context: str
  continuations: tuple


def _lettered(options: Sequence) -> str:
  return "\n".join(f"{letter}. {option}" for letter, option in zip(_LETTERS, options))


def _pope(fields: Mapping, style: str) -> str:
  question = fields["question"].strip() if style == "lmms_eval" else fields["question"]
  return f"{question}\n{SHORT_ANSWER}"


def _short_answer(fields: Mapping, style: str) -> str:
  return f"{fields['question']}\n{SHORT_ANSWER}"


def _textvqa(fields: Mapping, style: str) -> str:
  question = fields["question"].capitalize()
  if style == "lmms_eval":
    return f"{question}\n{SHORT_ANSWER}"
  return f"{question}\nReference OCR token: {', '.join(fields['ocr_tokens'])}\n{SHORT_ANSWER}"


def _mme(fields: Mapping, style: str) -> str:
  if style == "lmms_eval":
    question = fields["question"].strip().replace(" " + _MME_YES_NO, "")
  else:
    question = fields["question"].replace(_MME_YES_NO, "").strip()
  return f"{question}\n{SHORT_ANSWER}"


def _scienceqa(fields: Mapping, style: str) -> str:
  context = f"Context: {fields['hint']}\n" if fields["hint"] else ""
  body = f"{context}{fields['question']}\n{_lettered(fields['choices'])}"
  return f"{body.strip() if style == 'llava' else body}\n{OPTION_LETTER}"


def _seedbench(fields: Mapping, style: str) -> str:
  options = [fields[f"choice_{letter}"] for letter in "abcd"]
  return f"{fields['question']}\n{_lettered(options)}\n{OPTION_LETTER}"


def _na(value) -> bool:
  """Missing as pandas sees it: None or NaN."""
  return value is None or (isinstance(value, float) and math.isnan(value))


def _llava_absent(value) -> bool:
  """LLaVA's is_none: missing, or the text "nan" / "none" in any case."""
  return _na(value) or (isinstance(value, str) and value.lower() in ("nan", "none"))


def _mmbench(fields: Mapping, style: str) -> str:
  if style == "lmms_eval":  # options that are set and not "nan", then the hint unless missing or "nan"
    options = "".join(f"{letter}. {fields[letter]}\n" for letter in "ABCDE"
                      if fields.get(letter) and not _na(fields[letter]) and fields[letter] != "nan")
    listed = ("There are several options:\n" + options).rstrip("\n")
    hint = "" if _na(fields["hint"]) or fields["hint"] == "nan" else f"{fields['hint']} "
    return f"{hint}{fields['question']} {listed}\n{OPTION_LETTER}"
  # LLaVA's model_vqa_mmbench: the hint on its own line, options A-D up to the first absent one
  text = fields["question"]
  if not _llava_absent(fields["hint"]):
    text = f"{fields['hint']}\n{text}"
  for letter in "ABCD":
    if _llava_absent(fields[letter]):
      break
    text += f"\n{letter}. {fields[letter]}"
  return f"{text}\n{OPTION_LETTER}"


def _mmmu(fields: Mapping, style: str) -> str:
  if fields["question_type"] != "multiple-choice":
    return f"{fields['question']}\n\n{SHORT_ANSWER}"
  try:
    options = ast.literal_eval(fields["options"])  # MMMU stores the option list as its Python repr
  except (ValueError, SyntaxError):
    raise VisRegionError(f"mmmu_val {fields['id']}", f"expected options as a list, got {fields['options']!r}") from None
  return f"{fields['question']}\n{_lettered(options)}\n\n{OPTION_LETTER}"


def _mmlu_question(row: Mapping) -> str:
  return f"{row['question'].strip()}\n{_lettered(row['choices'])}\nAnswer:"


def mmlu_prompt(fields: Mapping, exemplars: Sequence[Mapping], num_fewshot: int = 5) -> ChoicePrompt:
  """lm-eval-harness's MMLU: the subject's description, the first `num_fewshot` dev rows
  answered, the question, and " A".." D" to score."""
  if len(exemplars) < num_fewshot:
    raise VisRegionError(f"mmlu subject {fields['subject']!r}",
                         f"expected {num_fewshot} dev rows for few-shot exemplars, found {len(exemplars)}")
  subject = " ".join(fields["subject"].split("_"))
  shots = "".join(f"{_mmlu_question(row)} {_LETTERS[row['answer']]}\n\n" for row in exemplars[:num_fewshot])
  context = f"The following are multiple choice questions (with answers) about {subject}.\n\n{shots}"
  return ChoicePrompt(context + _mmlu_question(fields), tuple(f" {letter}" for letter in "ABCD"))


BUILDERS = {"short_answer": _short_answer, "pope": _pope, "textvqa": _textvqa, "mme": _mme,
            "scienceqa": _scienceqa, "seedbench": _seedbench, "mmbench": _mmbench, "mmmu": _mmmu}


def build_prompt(task: str, fields: Mapping, *, num_images: int = 0, exemplars: Sequence[Mapping] = (),
                 style: str = "llava", num_fewshot: int = 5):
  """The prompt of a sample of `task` (`fields` as the readers give them): a ChatPrompt
  with `num_images` image entries, or MMLU's ChoicePrompt from its `exemplars`."""
  spec = tasks.task(task)
  if style not in STYLES:
    raise VisRegionError("prompt style", f"expected one of {', '.join(STYLES)}, got {style!r}")
  if spec.prompt == "mmlu":
    return mmlu_prompt(fields, exemplars, num_fewshot)
  return ChatPrompt(BUILDERS[spec.prompt](fields, style), num_images)
