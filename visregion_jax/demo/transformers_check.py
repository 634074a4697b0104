"""transformers answers held-out questions with the exported llava-hf model.

The demo's last step, taken the way a transformers user takes it: `AutoProcessor` on
the export, `apply_chat_template` with a content list holding the image,
`processor(images=, text=)` and `LlavaForConditionalGeneration.generate` (greedy).
Nothing of ours builds those inputs, so a processor file, chat template or image
setting the export gets wrong shows up here. Each answer is compared with the JAX
model's greedy answer to the same question (built by our own prompt code; they should
agree everywhere) and with the reference answer.
"""

import io

from PIL import Image

from visregion_jax.convert.processor import read_image_processor
from visregion_jax.data import skip
from visregion_jax.data.from_config import open_source
from visregion_jax.evaluation import answer_matches
from visregion_jax.generate import generate
from visregion_jax.generate.prompts import encode_chat

NUM_QUESTIONS = 8


def _until_eos(tokens, eos_ids) -> list:
  tokens = [int(t) for t in tokens]
  ends = [i for i, t in enumerate(tokens) if t in eos_ids]
  return tokens[:ends[0] + 1] if ends else tokens


def _questions(config, count: int) -> list:
  """(question text, images, reference answer) of the first readable held-out samples."""
  source, out = open_source(config.data, "eval"), []
  for index in range(len(source)):
    if len(out) == count:
      break
    try:
      sample = source[index]
    except skip.SkipSample:
      continue
    turns = sample["conversations"]
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in sample["images"]]
    out.append((turns[0]["value"].replace("<image>", "").strip(), images, turns[-1]["value"]))
  return out


def _transformers_tokens(hf_dir: str, questions: list, max_new_tokens: int) -> list:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  processor = transformers.AutoProcessor.from_pretrained(hf_dir)
  model = transformers.LlavaForConditionalGeneration.from_pretrained(hf_dir).eval()
  tokens = []
  for question, images, _ in questions:
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": question}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                           tokenize=False)
    inputs = processor(images=images or None, text=prompt, return_tensors="pt")
    with torch.no_grad():
      out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    tokens.append(out[0, inputs["input_ids"].shape[1]:].tolist())
  return tokens


def compare_with_transformers(config, results: dict, num_questions: int = NUM_QUESTIONS) -> dict:
  """{"count", "agree", "correct", "examples"} over the first held-out questions (at
  most `eval.num_samples`): `agree` counts token-identical answers, `correct` those of
  transformers that match the reference."""
  tokenizer, model = results["tokenizer"], results["model"]
  model.eval()
  questions = _questions(config, min(num_questions, config.eval.num_samples))
  max_new = config.eval.max_new_tokens
  hf_tokens = _transformers_tokens(results["hf_dir"], questions, max_new)
  image_processor, pad = read_image_processor(model.config.source)
  inputs = encode_chat(tokenizer, [q for q, _, _ in questions], [im for _, im, _ in questions],
                       image_token_id=model.config.image_token_id, num_image_tokens=model.config.num_image_tokens,
                       image_processor=image_processor, pad_to_square=pad)
  ours = generate(model, inputs.pop("input_ids"), inputs.pop("attention_mask"), max_new_tokens=max_new, **inputs)
  eos_ids = set(model.config.eos_token_ids)
  out = {"count": len(questions), "agree": 0, "correct": 0, "examples": []}
  for (question, _, reference), theirs, mine in zip(questions, hf_tokens, ours):
    hf_answer = tokenizer.decode(theirs, skip_special_tokens=True).strip()
    out["agree"] += _until_eos(theirs, eos_ids) == _until_eos(mine, eos_ids)
    out["correct"] += answer_matches(hf_answer, reference)
    if len(out["examples"]) < 3:
      out["examples"].append({"question": question, "reference": reference, "transformers": hf_answer,
                              "jax": tokenizer.decode(mine, skip_special_tokens=True).strip()})
  return out
