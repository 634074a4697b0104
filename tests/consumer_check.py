"""An llava-hf export used the way transformers users use it, against our own path.

transformers' side: `AutoProcessor` + `apply_chat_template` (a content list with an
image entry) + `processor(images=, text=)` + `LlavaForConditionalGeneration.generate`
(greedy), and `pipeline("image-text-to-text")`. Our side: `load_model` + the processor
files read by our code (`encode_chat`, `read_image_processor`) + `generate`, batched.
The two must build the same input ids and pixels and generate the same tokens.
"""

import numpy as np
import torch
import transformers

from visregion_jax.convert import load_tokenizer
from visregion_jax.convert.processor import read_image_processor
from visregion_jax.generate import generate
from visregion_jax.generate.prompts import encode_chat
from visregion_jax.loading import load_model


def question_images(count: int, seed: int = 0) -> list:
  """Non-square RGB images (so pad-to-square matters) with some structure."""
  rng = np.random.RandomState(seed)
  out = []
  for i in range(count):
    image = np.zeros((40 + 7 * i, 56, 3), np.uint8)
    image[..., i % 3] = np.linspace(0, 255, 56, dtype=np.uint8)[None, :]
    image[rng.randint(0, 30):, rng.randint(0, 40):] = rng.randint(0, 256, 3)
    out.append(image)
  return out


def _until_eos(tokens, eos_ids) -> list:
  tokens = [int(t) for t in tokens]
  ends = [i for i, t in enumerate(tokens) if t in eos_ids]
  return tokens[:ends[0] + 1] if ends else tokens


def transformers_answers(hf_dir: str, images: list, questions: list, max_new_tokens: int) -> tuple:
  """(input ids per question, pixel values NHWC per question, new tokens per question)."""
  processor = transformers.AutoProcessor.from_pretrained(hf_dir)
  model = transformers.LlavaForConditionalGeneration.from_pretrained(hf_dir).eval()
  ids, pixels, tokens = [], [], []
  for image, question in zip(images, questions):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.no_grad():
      out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    ids.append(inputs["input_ids"][0].numpy())
    pixels.append(inputs["pixel_values"].numpy().transpose(0, 2, 3, 1))
    tokens.append(out[0, inputs["input_ids"].shape[1]:].numpy())
  return ids, pixels, tokens


def check_transformers_path(hf_dir: str, max_new_tokens: int = 6, num_questions: int = 3) -> None:
  images = question_images(num_questions)
  questions = [f"What is in picture {i}?" for i in range(num_questions)]
  hf_ids, hf_pixels, hf_tokens = transformers_answers(hf_dir, images, questions, max_new_tokens)

  model = load_model(hf_dir)
  tokenizer = load_tokenizer(model.config.source)
  image_processor, pad = read_image_processor(model.config.source)
  inputs = encode_chat(tokenizer, questions, [[im] for im in images], image_processor=image_processor,
                       pad_to_square=pad, image_token_id=model.config.image_token_id,
                       num_image_tokens=model.config.num_image_tokens)
  for i, (ids, pixels) in enumerate(zip(hf_ids, hf_pixels)):
    ours = inputs["input_ids"][i][inputs["attention_mask"][i] == 1]
    np.testing.assert_array_equal(ours, ids)
    np.testing.assert_allclose(inputs["pixel_values"][i:i + 1], pixels, atol=1e-5)
  ours = generate(model, inputs["input_ids"], inputs["attention_mask"], pixel_values=inputs["pixel_values"],
                  max_new_tokens=max_new_tokens)
  eos = set(model.config.eos_token_ids)
  assert [_until_eos(t, eos) for t in ours] == [_until_eos(t, eos) for t in hf_tokens]

  pipe = transformers.pipeline("image-text-to-text", model=hf_dir)
  messages = [{"role": "user", "content": [{"type": "image", "image": _pil(images[0])},
                                            {"type": "text", "text": questions[0]}]}]
  result = pipe(text=messages, max_new_tokens=max_new_tokens, do_sample=False)
  assert result and "generated_text" in result[0]


def _pil(array):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  return Image.fromarray(array)
