"""transformers answers held-out questions with the exported llava-hf model.

The demo's last step: the proof that the export is a working HF model, not just
tensors. Each prompt is built by our tokenization (same template, same image
expansion) and our preprocessing; transformers' greedy answer is compared with the
JAX model's greedy answer to the same prompt (they should agree everywhere) and with
the reference answer.
"""

import numpy as np

from visregion_jax.data.from_config import open_source
from visregion_jax.data.pipeline import SampleLoader
from visregion_jax.data.tokenize import IGNORE_INDEX
from visregion_jax.evaluation import answer_matches
from visregion_jax.generate import generate

NUM_QUESTIONS = 8


def _until_eos(tokens, eos_ids) -> list:
  tokens = [int(t) for t in tokens]
  ends = [i for i, t in enumerate(tokens) if t in eos_ids]
  return tokens[:ends[0] + 1] if ends else tokens


def compare_with_transformers(config, results: dict, num_questions: int = NUM_QUESTIONS) -> dict:
  """{"count", "agree", "correct", "examples"} over the first held-out questions (at
  most `eval.num_samples`): `agree` counts token-identical answers."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  hf_model = transformers.LlavaForConditionalGeneration.from_pretrained(results["hf_dir"]).eval()
  tokenizer, model = results["tokenizer"], results["model"]
  model.eval()
  source = open_source(config.data, "eval")
  loader = SampleLoader(source, tokenizer, results["data_config"])
  out = {"count": 0, "agree": 0, "correct": 0, "examples": []}
  eos_ids = set(model.config.eos_token_ids)
  for index in range(min(num_questions, config.eval.num_samples, len(source))):
    loaded = loader(index)
    if "skip" in loaded:
      continue
    prompt = loaded["input_ids"][:np.flatnonzero(loaded["labels"] != IGNORE_INDEX)[0]]
    with torch.no_grad():
      hf_tokens = hf_model.generate(input_ids=torch.tensor(prompt[None].astype(np.int64)),
                                    pixel_values=torch.tensor(loaded["pixel_values"].transpose(0, 3, 1, 2)),
                                    do_sample=False, max_new_tokens=config.eval.max_new_tokens)[0, len(prompt):]
    ours = generate(model, prompt[None], max_new_tokens=config.eval.max_new_tokens,
                    pixel_values=loaded["pixel_values"])[0]
    hf_answer = tokenizer.decode(hf_tokens, skip_special_tokens=True).strip()
    our_answer = tokenizer.decode(ours, skip_special_tokens=True).strip()
    reference = source[index]["conversations"][-1]["value"]
    out["count"] += 1
    out["agree"] += _until_eos(hf_tokens.tolist(), eos_ids) == _until_eos(ours, eos_ids)
    out["correct"] += answer_matches(hf_answer, reference)
    if len(out["examples"]) < 3:
      out["examples"].append({"question": source[index]["conversations"][0]["value"].replace("<image>", "").strip(),
                              "reference": reference, "transformers": hf_answer, "jax": our_answer})
  return out
