"""The NNX decoder is numerically transformers' model: logits within 1e-4 in float32."""

import copy

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import hf_logits, random_hf_model, save_hf_model, tiny_llama_config, tiny_phi3_config

from visregion_jax import convert

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

CONFIGS = {
    "gqa": tiny_llama_config(num_key_value_heads=2),
    "untied_mha": tiny_llama_config(tie_word_embeddings=False),
    "tied": tiny_llama_config(tie_word_embeddings=True, num_key_value_heads=1),
    "llama3_rope": tiny_llama_config(num_key_value_heads=2, rope_theta=500000.0,
                                     rope_scaling=LLAMA3_ROPE),
    "linear_rope": tiny_llama_config(rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "bias": tiny_llama_config(attention_bias=True, mlp_bias=True, num_key_value_heads=2),
    "explicit_head_dim": tiny_llama_config(head_dim=32, num_key_value_heads=2),
    "phi3": tiny_phi3_config(),
    "phi3_sliding_window": tiny_phi3_config(sliding_window=48),
    "phi3_partial_rotary": tiny_phi3_config(partial_rotary_factor=0.5),
}


def padded_batch(rng, vocab, length=320):
  """Three samples: unpadded, left padded and right padded (300+ tokens for RoPE)."""
  ids = rng.randint(3, vocab, size=(3, length))
  mask = np.ones_like(ids)
  mask[1, :37] = 0
  mask[2, -53:] = 0
  return ids, mask


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_transformers(name, tmp_path, rng):
  hf = random_hf_model(CONFIGS[name])
  model = convert.from_hf(save_hf_model(hf, tmp_path))
  ids, mask = padded_batch(rng, hf.config.vocab_size)
  ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
  ref = hf_logits(hf, ids, mask)
  real = mask.astype(bool)
  np.testing.assert_array_less(np.abs(ours - ref)[real].max(), 1e-4)


def test_left_padding_equals_unpadded(tmp_path, rng):
  hf = random_hf_model(CONFIGS["gqa"])
  model = convert.from_hf(save_hf_model(hf, tmp_path))
  ids = rng.randint(3, 128, size=(1, 40))
  padded = np.concatenate([np.zeros((1, 9), ids.dtype), ids], axis=1)
  mask = np.concatenate([np.zeros((1, 9), int), np.ones((1, 40), int)], axis=1)
  alone = np.asarray(model(jnp.asarray(ids)))
  together = np.asarray(model(jnp.asarray(padded), jnp.asarray(mask)))[:, 9:]
  np.testing.assert_allclose(together, alone, atol=1e-5)


def test_hidden_states_are_layer_inputs_and_outputs(tmp_path, rng):
  """L + 1 states: embeddings, then each layer's output before the final norm."""
  hf = random_hf_model(CONFIGS["gqa"])
  model = convert.from_hf(save_hf_model(hf, tmp_path))
  ids = rng.randint(3, 128, size=(2, 24))
  out = model.forward(jnp.asarray(ids), hidden_states=True)
  with torch.no_grad():
    ref = hf(torch.tensor(ids), output_hidden_states=True).hidden_states
  assert len(out.hidden_states) == hf.config.num_hidden_layers + 1
  for i in range(hf.config.num_hidden_layers):  # HF's last entry is after the final norm
    np.testing.assert_allclose(np.asarray(out.hidden_states[i]), ref[i].numpy(), atol=1e-5)
  final = np.asarray(model.norm(out.hidden_states[-1]))
  np.testing.assert_allclose(final, ref[-1].numpy(), atol=1e-5)


def test_remat_changes_nothing(tmp_path, rng):
  hf = random_hf_model(CONFIGS["gqa"])
  path = save_hf_model(hf, tmp_path)
  ids = jnp.asarray(rng.randint(3, 128, size=(2, 16)))
  fp32 = convert.from_hf(path)
  remat = convert.from_hf(path)
  remat.config = remat.config.replace(remat=True)
  np.testing.assert_allclose(np.asarray(remat(ids)), np.asarray(fp32(ids)), atol=1e-6)


@pytest.mark.parametrize("name", ["gqa", "phi3"])
def test_bf16_error_is_transformers_bf16_error(name, tmp_path, rng):
  """bf16 compute may lose only what transformers' own bf16 model loses, both measured
  against the fp32 logits (ours / theirs: max 0.79-0.86, mean 0.91-0.94 when measured).
  These logits span about +-0.7 and bf16 moves them by ~1e-2, so a flat atol of 0.1
  tells little. Queries and keys are scaled up so attention follows positions, and 320
  tokens put positions past 256, where bf16 no longer holds integers: RoPE angles
  rounded to bf16 give 10-12x transformers' max error here."""
  hf = random_hf_model(CONFIGS[name])
  with torch.no_grad():
    for param_name, p in hf.named_parameters():
      if any(proj in param_name for proj in ("q_proj", "k_proj", "qkv_proj")):
        p.mul_(8.0)
  path = save_hf_model(hf, tmp_path)
  ids, mask = padded_batch(rng, hf.config.vocab_size)
  want = hf_logits(hf, ids, mask)
  hf_error = np.abs(hf_logits(copy.deepcopy(hf).to(torch.bfloat16), ids, mask) - want)
  bf16 = convert.from_hf(path, dtype="bfloat16")
  out = bf16(jnp.asarray(ids), jnp.asarray(mask))
  assert out.dtype == jnp.bfloat16
  assert bf16.layers[0].self_attn.q_proj.kernel[...].dtype == jnp.float32  # params stay fp32
  error = np.abs(np.asarray(out, np.float32) - want)
  real = mask.astype(bool)
  assert error[real].max() <= 2 * hf_error[real].max()
  assert error[real].mean() <= 1.25 * hf_error[real].mean()
