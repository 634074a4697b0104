"""llava-hf exports carry a processor transformers users can call: the chat template of
the run's training format (content lists with images), the image processor, `<image>`."""

import json
import os

import numpy as np
import pytest
import skimage.data
from consumer_check import check_transformers_path, question_images, transformers_answers
from PIL import Image
from test_convert_errors import assert_one_error_line
from transformers import LlavaImageProcessorPil

from visregion_jax.convert import load_tokenizer
from visregion_jax.convert.gguf_file import SMOLLM2_ALIAS, resolve_model_path
from visregion_jax.data.chat_jinja import chat_template_jinja
from visregion_jax.data.image_processing import ImageProcessorConfig, preprocess
from visregion_jax.data.templates import TEMPLATES
from visregion_jax.generate.__main__ import main as generate_main

CONVERSATION = [("user", "<image>\nWhat digit is this?"), ("assistant", "Seven."),
                ("user", "And its colour?"), ("assistant", "Red.")]


@pytest.fixture(scope="module")
def smollm2_tokenizer():
  return load_tokenizer(resolve_model_path(SMOLLM2_ALIAS))


def as_content_lists(turns) -> list:
  """The conversation as HF messages whose user turns are content lists with images."""
  messages = []
  for role, text in turns:
    if role == "user" and text.startswith("<image>\n"):
      content = [{"type": "image"}, {"type": "text", "text": text[len("<image>\n"):]}]
    else:
      content = [{"type": "text", "text": text}]
    messages.append({"role": role, "content": content})
  return messages


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("system", [None, "Be brief."], ids=["default_system", "own_system"])
def test_jinja_renders_what_training_renders(name, system, smollm2_tokenizer):
  turns = ([("system", system)] if system else []) + CONVERSATION
  jinja = chat_template_jinja(name, smollm2_tokenizer)
  trained = "".join(s.text for s in TEMPLATES[name].render(turns, smollm2_tokenizer))
  plain = [{"role": r, "content": t} for r, t in turns]
  lists = ([{"role": "system", "content": system}] if system else []) + as_content_lists(CONVERSATION)
  for messages in (plain, lists):
    rendered = smollm2_tokenizer.apply_chat_template(messages, chat_template=jinja, tokenize=False)
    assert rendered == trained
  # The generation prompt is where a training prompt ends: before the learned reply.
  segments = TEMPLATES[name].render(turns[:-1] + [("assistant", "x")], smollm2_tokenizer)
  last_learned = max(i for i, s in enumerate(segments) if s.learned)
  prompt = smollm2_tokenizer.apply_chat_template(lists[:-1], chat_template=jinja, tokenize=False,
                                                 add_generation_prompt=True)
  assert prompt == "".join(s.text for s in segments[:last_learned])


def test_tokenizer_template_is_wrapped_once(smollm2_tokenizer):
  jinja = chat_template_jinja("tokenizer", smollm2_tokenizer)
  smollm2_tokenizer.chat_template, original = jinja, smollm2_tokenizer.chat_template
  try:
    assert chat_template_jinja("tokenizer", smollm2_tokenizer) == jinja
  finally:
    smollm2_tokenizer.chat_template = original


@pytest.mark.parametrize("pad", [True, False], ids=["pad", "nopad"])
@pytest.mark.parametrize("config", [ImageProcessorConfig.clip_336(), ImageProcessorConfig.siglip_384()],
                         ids=["clip", "siglip"])
def test_llava_image_processor_matches_ours(config, pad):
  d = json.loads(json.dumps(config.to_hf_dict(pad_to_square=pad)))
  assert ImageProcessorConfig.from_hf_dict(d, "processor_config.json") == config
  processor = LlavaImageProcessorPil(**{k: v for k, v in d.items() if k != "image_processor_type"})
  image = skimage.data.coffee()  # 400 x 600: padding changes the picture
  theirs = processor(image, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
  np.testing.assert_allclose(preprocess([image], config, pad_to_square=pad), theirs, atol=1e-5)


@pytest.fixture(scope="module")
def trained(tiny_trained):
  return tiny_trained


def test_training_export_answers_through_transformers_processor(trained):
  hf_dir = os.path.join(trained, "hf")
  for name in ("processor_config.json", "preprocessor_config.json", "chat_template.jinja",
               "generation_config.json", "tokenizer.json"):
    assert os.path.isfile(os.path.join(hf_dir, name)), name
  check_transformers_path(hf_dir)


def test_generate_command_answers_about_images_as_transformers_does(trained, tmp_path, capsys):
  hf_dir = os.path.join(trained, "hf")
  images = question_images(2, seed=4)
  paths = []
  for i, image in enumerate(images):
    paths.append(str(tmp_path / f"picture{i}.png"))
    Image.fromarray(image).save(paths[-1])
  questions = ["What is this?", "Which colour dominates?"]
  _, _, hf_tokens = transformers_answers(hf_dir, images, questions, max_new_tokens=5)
  tokenizer = load_tokenizer(hf_dir)
  argv = ["--model", hf_dir, "--max-new-tokens", "5"]
  assert generate_main(argv + ["--image", paths[0], "--image", paths[1]] + questions) == 0
  printed = capsys.readouterr().out
  for path, question, tokens in zip(paths, questions, hf_tokens):
    answer = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    assert f"> [{path}] {question}\n{answer}\n" in printed


@pytest.mark.parametrize("case", ["missing", "not_an_image", "count", "text_decoder"])
def test_generate_command_bad_images(case, tmp_path, capsys):
  """Image errors come before the model loads: a model path that does not exist is never read."""
  good, bad = tmp_path / "ok.png", tmp_path / "bad.png"
  Image.fromarray(question_images(1)[0]).save(good)
  bad.write_text("not a png")
  model, needle = str(tmp_path / "no_model"), str(good)
  args = {"missing": ["--image", str(tmp_path / "gone.png"), "q"],
          "not_an_image": ["--image", str(bad), "q"],
          "count": ["--image", str(good), "--image", str(good), "q1", "q2", "q3"],
          "text_decoder": ["--image", str(good), "q"]}[case]
  if case == "text_decoder":
    model, needle = SMOLLM2_ALIAS, "--image"
  else:
    needle = {"missing": "gone.png", "not_an_image": "bad.png", "count": "--image"}[case]
  rc = generate_main(["--model", model] + args)
  assert_one_error_line(rc, capsys.readouterr().err, needle)
