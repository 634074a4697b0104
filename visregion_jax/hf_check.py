"""transformers answers a held-out question with an exported llava-hf model.

The demo's last step: the proof that the export is a working HF model, not just
tensors. The prompt is built by our tokenization (same template, same image
expansion), the pixels by our preprocessing; transformers does the rest.
"""

import numpy as np

from visregion_jax.data.pipeline import SampleLoader
from visregion_jax.train_step import IGNORE


def answer_with_transformers(hf_dir: str, tokenizer, source, data_config, index: int = 0,
                             max_new_tokens: int = 8) -> dict:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  model = transformers.LlavaForConditionalGeneration.from_pretrained(hf_dir).eval()
  loaded = SampleLoader(source, tokenizer, data_config)(index)
  prompt = loaded["input_ids"][:np.flatnonzero(loaded["labels"] != IGNORE)[0]]
  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor(prompt[None].astype(np.int64)),
                         pixel_values=torch.tensor(loaded["pixel_values"].transpose(0, 3, 1, 2)),
                         do_sample=False, max_new_tokens=max_new_tokens)
  sample = source[index]
  return {"question": sample["conversations"][0]["value"].replace("<image>", "").strip(),
          "reference": sample["conversations"][-1]["value"],
          "answer": tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True).strip()}
