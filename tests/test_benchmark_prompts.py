"""Benchmark prompts: the exact text per task in both wordings, LLaVA's own question files
reproduced from the readers' fields, MMLU's few-shot text, and turns encode_chat takes."""

import json

import numpy as np
import pytest
import test_benchmark_llava_layout as layouts
from transformers.utils.chat_template_utils import render_jinja_template

from visregion_jax.benchmarks import tasks
from visregion_jax.benchmarks.prompts import ChatPrompt, ChoicePrompt, build_prompt, mmlu_prompt
from visregion_jax.benchmarks.readers import open_task
from visregion_jax.data.chat_jinja import chat_template_jinja
from visregion_jax.data.image_processing import ImageProcessorConfig
from visregion_jax.errors import VisRegionError
from visregion_jax.generate.prompts import encode_chat

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."


def text(task, fields, style="llava"):
  return build_prompt(task, fields, num_images=1, style=style).text


@pytest.mark.parametrize("style", ["llava", "lmms_eval"])
def test_short_answer_tasks(style):
  for task in ("gqa", "vqav2_val"):
    assert text(task, {"question": "What color is the bus?"}, style) == f"What color is the bus?\n{SHORT}"
  pope = text("pope", {"question": " Is there a dog in the image? "}, style)
  stripped = "Is there a dog in the image?" if style == "lmms_eval" else " Is there a dog in the image? "
  assert pope == f"{stripped}\n{SHORT}"


def test_textvqa_lists_ocr_tokens_in_llava_wording_only():
  fields = {"question": "what is the BRAND of this camera?", "ocr_tokens": ["DAKOTA", "digital"]}
  question = "What is the brand of this camera?"  # str.capitalize, as both references do
  assert text("textvqa_val", fields) == f"{question}\nReference OCR token: DAKOTA, digital\n{SHORT}"
  assert text("textvqa_val", {**fields, "ocr_tokens": []}) == f"{question}\nReference OCR token: \n{SHORT}"
  assert text("textvqa_val", fields, "lmms_eval") == f"{question}\n{SHORT}"


def test_mme_drops_its_own_yes_no_instruction():
  fields = {"question": "Is this a cat? Please answer yes or no."}
  for style in ("llava", "lmms_eval"):
    assert text("mme", fields, style) == f"Is this a cat?\n{SHORT}"
  doubled = {"question": "Is this a cat?  Please answer yes or no."}
  assert text("mme", doubled) == f"Is this a cat?\n{SHORT}"
  assert text("mme", doubled, "lmms_eval") == f"Is this a cat? \n{SHORT}"


def test_scienceqa_context_question_options():
  fields = {"question": "Which is a solid?", "choices": ["water", "rock", "air"], "answer": 1, "hint": "Look."}
  expected = f"Context: Look.\nWhich is a solid?\nA. water\nB. rock\nC. air\n{LETTER}"
  assert text("scienceqa_img", fields) == text("scienceqa_img", fields, "lmms_eval") == expected
  assert text("scienceqa_img", {**fields, "hint": ""}) == f"Which is a solid?\nA. water\nB. rock\nC. air\n{LETTER}"
  spaced = {**fields, "hint": "", "question": " Which is a solid?", "choices": ["water", "rock "]}
  assert text("scienceqa_img", spaced) == f"Which is a solid?\nA. water\nB. rock\n{LETTER}"  # stripped as LLaVA does
  assert text("scienceqa_img", spaced, "lmms_eval") == f" Which is a solid?\nA. water\nB. rock \n{LETTER}"


def test_seedbench_options():
  fields = {"question": "How many cups?", "choice_a": "1", "choice_b": "2", "choice_c": "3", "choice_d": "4"}
  for style in ("llava", "lmms_eval"):
    assert text("seedbench", fields, style) == f"How many cups?\nA. 1\nB. 2\nC. 3\nD. 4\n{LETTER}"


def test_mmbench_in_both_wordings():
  fields = {"question": "Which is larger?", "hint": "See the figure.", "A": "cat", "B": "dog", "C": "None", "D": None}
  assert text("mmbench_en_dev", fields) == f"See the figure.\nWhich is larger?\nA. cat\nB. dog\n{LETTER}"
  assert text("mmbench_en_dev", fields, "lmms_eval") == (
      f"See the figure. Which is larger? There are several options:\nA. cat\nB. dog\nC. None\n{LETTER}")
  no_hint = {**fields, "hint": "nan", "C": float("nan")}
  assert text("mmbench_en_dev", no_hint) == f"Which is larger?\nA. cat\nB. dog\n{LETTER}"
  assert text("mmbench_en_dev", no_hint, "lmms_eval") == (
      f"Which is larger? There are several options:\nA. cat\nB. dog\n{LETTER}")
  gap = {**no_hint, "B": None, "C": "bird"}  # LLaVA stops at the first absent option; lmms-eval skips it
  assert text("mmbench_en_dev", gap) == f"Which is larger?\nA. cat\n{LETTER}"
  assert text("mmbench_en_dev", gap, "lmms_eval").endswith("options:\nA. cat\nC. bird\n" + LETTER)


def test_mmmu_keeps_its_image_placeholders():
  choice = {"id": "validation_Art_1", "question": "Which painting is older, <image 1> or <image 2>?",
            "options": "['<image 1>', '<image 2>', 'Same age']", "question_type": "multiple-choice"}
  expected = ("Which painting is older, <image 1> or <image 2>?\nA. <image 1>\nB. <image 2>\nC. Same age\n\n"
              + LETTER)
  prompt = build_prompt("mmmu_val", choice, num_images=2)
  assert prompt.text == expected and prompt.num_images == 2
  assert [part["type"] for part in prompt.messages[0]["content"]] == ["image", "image", "text"]
  open_question = {**choice, "question": "How many people are in <image 1>?", "options": "[]",
                   "question_type": "open"}
  assert text("mmmu_val", open_question) == f"How many people are in <image 1>?\n\n{SHORT}"
  with pytest.raises(VisRegionError, match="validation_Art_1: expected options as a list"):
    text("mmmu_val", {**choice, "options": "['unclosed"})


def mmlu_row(k: int, subject: str = "high_school_biology", answer: int = 0) -> dict:
  return {"question": f" Question {k}? ", "subject": subject, "choices": [f"c{k}a", f"c{k}b", f"c{k}c", f"c{k}d"],
          "answer": answer}


def test_mmlu_is_lm_eval_harness_five_shot_text():
  exemplars = [mmlu_row(k, answer=k % 4) for k in range(6)]
  prompt = build_prompt("mmlu", mmlu_row(9), exemplars=exemplars)
  assert isinstance(prompt, ChoicePrompt) and prompt.continuations == (" A", " B", " C", " D")
  shots = "".join(f"Question {k}?\nA. c{k}a\nB. c{k}b\nC. c{k}c\nD. c{k}d\nAnswer: {'ABCD'[k % 4]}\n\n"
                  for k in range(5))
  assert prompt.context == ("The following are multiple choice questions (with answers) about high school "
                            f"biology.\n\n{shots}Question 9?\nA. c9a\nB. c9b\nC. c9c\nD. c9d\nAnswer:")
  zero = mmlu_prompt(mmlu_row(9), (), num_fewshot=0)
  assert zero.context.endswith("biology.\n\nQuestion 9?\nA. c9a\nB. c9b\nC. c9c\nD. c9d\nAnswer:")
  with pytest.raises(VisRegionError, match="expected 5 dev rows"):
    build_prompt("mmlu", mmlu_row(9), exemplars=exemplars[:4])


def test_unknown_task_and_style():
  with pytest.raises(VisRegionError, match="^eval.tasks:"):
    build_prompt("okvqa", {"question": "q"})
  with pytest.raises(VisRegionError, match="^prompt style: expected one of llava, lmms_eval"):
    build_prompt("gqa", {"question": "q"}, style="qwen")


@pytest.mark.parametrize("task", ["gqa", "textvqa_val", "pope", "mme", "seedbench"])
def test_llava_wording_reproduces_llavas_question_files(task, tmp_path):
  """From the fields the LLaVA-layout reader joins, the prompt is the question file's own text."""
  layouts.LAYOUTS[task](tmp_path)
  question_file = tmp_path / tasks.TASKS[task].llava.question_file
  lines = [json.loads(line) for line in question_file.read_text().splitlines()]
  samples = list(open_task(task, str(tmp_path)).samples())
  assert [text(task, s.fields) for s in samples] == [line["text"] for line in lines]


def test_llava_wording_reproduces_scienceqa_and_mmbench(tmp_path):
  layouts.scienceqa_layout(tmp_path / "sqa")
  entries = json.loads((tmp_path / "sqa" / "llava_test_CQM-A.json").read_text())
  samples = list(open_task("scienceqa_img", str(tmp_path / "sqa")).samples())
  asked = [e["conversations"][0]["value"].replace("<image>", "").strip() for e in entries if "image" in e]
  assert [text("scienceqa_img", s.fields) for s in samples] == [f"{q}\n{LETTER}" for q in asked]
  layouts.mmbench_layout(tmp_path / "mmb")
  first, second = open_task("mmbench_en_dev", str(tmp_path / "mmb")).samples()
  hint = "The passage:\n\tsee the figure."
  assert text("mmbench_en_dev", first.fields) == f"{hint}\nWhich is larger?\nA. cat\nB. dog\n{LETTER}"
  assert text("mmbench_en_dev", second.fields) == f"Which is larger?\nA. dog\nB. cat\n{LETTER}"


def test_the_turn_renders_as_llava_15_prompts_it():
  prompt = build_prompt("pope", {"question": "Is there a dog in the image?"}, num_images=1)
  rendered, _ = render_jinja_template(conversations=[prompt.messages], add_generation_prompt=True,
                                      chat_template=chat_template_jinja("vicuna_v1", None))
  assert rendered == [("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                       "helpful, detailed, and polite answers to the user's questions. USER: <image>\n"
                       f"Is there a dog in the image?\n{SHORT} ASSISTANT:")]


class RecordingTokenizer:
  """Just enough tokenizer for encode_chat: records the messages it is asked to render."""
  pad_token_id, eos_token_id = 0, 2

  def __init__(self):
    self.messages = []

  def apply_chat_template(self, messages, tokenize, add_generation_prompt):
    self.messages.append(messages)
    return json.dumps(messages)

  def __call__(self, text, add_special_tokens):
    return {"input_ids": [5] * text.count('"type": "image"') + [7, 8]}


@pytest.mark.parametrize("num_images", [1, 3])
def test_encode_chat_takes_the_prompt_as_the_same_turn(num_images):
  prompt = build_prompt("mmmu_val", {"id": "x", "question": "Compare <image 1>.", "options": "['a', 'b']",
                                     "question_type": "multiple-choice"}, num_images=num_images)
  assert isinstance(prompt, ChatPrompt)
  tokenizer = RecordingTokenizer()
  images = [np.zeros((4, 4, 3), np.uint8)] * num_images
  out = encode_chat(tokenizer, [prompt.text], [images], image_token_id=5, num_image_tokens=2,
                    image_processor=ImageProcessorConfig.clip_336())
  assert tokenizer.messages == [prompt.messages]
  assert out["pixel_values"].shape[0] == num_images
