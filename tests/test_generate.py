"""Decoding with the KV cache equals decoding without it, and equals transformers' greedy."""

import numpy as np
import pytest
import torch
from conftest import greedy_without_cache, random_hf_model, save_hf_model, tiny_llama_config, tiny_phi3_config

from visregion_jax import convert, generate


@pytest.fixture(scope="module", params=["llama", "phi3"])
def pair(request, tmp_path_factory):
  cfg = (tiny_llama_config(num_key_value_heads=2) if request.param == "llama"
         else tiny_phi3_config(sliding_window=12))
  hf = random_hf_model(cfg, seed=3)
  return hf, convert.from_hf(save_hf_model(hf, tmp_path_factory.mktemp(request.param)))


def test_cached_greedy_equals_uncached(pair):
  _, model = pair
  ids = np.random.RandomState(1).randint(3, 128, size=(2, 9))
  cached = generate.generate(model, ids, max_new_tokens=12, eos_token_ids=[])
  np.testing.assert_array_equal(cached, greedy_without_cache(model, ids, 12))


def test_greedy_equals_transformers_with_left_padding(pair):
  hf, model = pair
  rng = np.random.RandomState(2)
  prompts = [rng.randint(3, 128, size=n) for n in (11, 6, 8)]
  width = max(len(p) for p in prompts)
  ids = np.zeros((len(prompts), width), np.int64)
  mask = np.zeros_like(ids)
  for i, p in enumerate(prompts):
    ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
  ours = generate.generate(model, ids, mask, max_new_tokens=10, eos_token_ids=[])
  with torch.no_grad():
    ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                      max_new_tokens=10, min_new_tokens=10, pad_token_id=0).numpy()[:, width:]
  np.testing.assert_array_equal(ours, ref)


def test_stops_at_eos_and_pads_after(pair):
  _, model = pair
  ids = np.random.RandomState(4).randint(3, 128, size=(2, 7))
  free = generate.generate(model, ids, max_new_tokens=8, eos_token_ids=[])
  eos = int(free[0, 2])  # make sample 0's third token the end of sequence
  stopped = generate.generate(model, ids, max_new_tokens=8, eos_token_ids=[eos], pad_token_id=0)
  for row in range(2):
    hits = np.flatnonzero(free[row] == eos)
    end = hits[0] + 1 if hits.size else 8
    assert row == 1 or end <= 3
    np.testing.assert_array_equal(stopped[row, :end], free[row, :end])
    assert (stopped[row, end:] == 0).all()


def test_sampling_is_seeded_and_top_p_tiny_is_greedy(pair):
  _, model = pair
  ids = np.random.RandomState(5).randint(3, 128, size=(2, 5))
  a = generate.generate(model, ids, max_new_tokens=6, eos_token_ids=[], temperature=1.0, seed=7)
  b = generate.generate(model, ids, max_new_tokens=6, eos_token_ids=[], temperature=1.0, seed=7)
  np.testing.assert_array_equal(a, b)
  nucleus = generate.generate(model, ids, max_new_tokens=6, eos_token_ids=[], temperature=1.0,
                              top_p=1e-6, seed=9)
  np.testing.assert_array_equal(nucleus, generate.generate(model, ids, max_new_tokens=6, eos_token_ids=[]))
