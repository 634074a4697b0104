"""Layer scores against numpy on transformers' hidden states; dropping layers against
transformers' model with the same layers deleted."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import greedy_without_cache, random_hf_model, save_hf_model, tiny_llama_config, tiny_phi3_config
from test_lvlm import batch_with_images, llava_model

from visregion_jax import convert, generate, prune
from visregion_jax.errors import VisRegionError


def numpy_scores(hidden_states, mask, metric="block_influence", block=1):
  """The API's definition, from HF's hidden states: mean over real tokens of 1 - cos."""
  hs = [h.astype(np.float64) for h in hidden_states]
  real = mask.astype(bool)
  out = []
  for i in range(len(hs) - block):
    a, b = hs[i][real], hs[i + block][real]
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    out.append(np.mean(1 - cos) if metric == "block_influence" else np.mean(np.arccos(np.clip(cos, -1, 1)) / np.pi))
  return np.array(out)


def hf_pre_norm_states(model, **inputs):
  """HF's hidden states with the last one taken before the final norm (as the API defines)."""
  captured = {}
  decoder = model.model.language_model if hasattr(model.model, "language_model") else model.model
  handle = decoder.layers[-1].register_forward_hook(lambda m, i, o: captured.update(last=o[0] if isinstance(o, tuple) else o))
  with torch.no_grad():
    states = model(**inputs, output_hidden_states=True).hidden_states
  handle.remove()
  return [s.numpy() for s in states[:-1]] + [captured["last"].numpy()]


def padded(rng, vocab, shape=(3, 40)):
  ids = rng.randint(3, vocab, size=shape)
  mask = np.ones_like(ids)
  mask[1, :11] = 0
  mask[2, -7:] = 0
  return ids, mask


@pytest.mark.parametrize("metric", ["block_influence", "angular"])
def test_llama_scores_match_numpy_on_transformers_states(metric, tmp_path):
  hf = random_hf_model(tiny_llama_config(num_key_value_heads=2))
  model = convert.from_hf(save_hf_model(hf, tmp_path))
  ids, mask = padded(np.random.RandomState(0), 128)
  positions = np.maximum(mask.cumsum(1) - 1, 0)
  states = hf_pre_norm_states(hf, input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                              position_ids=torch.tensor(positions))
  batches = [{"input_ids": ids[:2], "attention_mask": mask[:2]}, {"input_ids": ids[2:], "attention_mask": mask[2:]}]
  got = prune.layer_scores(model, batches, metric=metric)
  np.testing.assert_allclose(got, numpy_scores(states, mask, metric), atol=1e-5)
  block = prune.layer_scores(model, batches, metric=metric, block_size=2)
  np.testing.assert_allclose(block, numpy_scores(states, mask, metric, 2), atol=1e-5)


def test_llava_scores_include_image_tokens(tmp_path):
  hf = llava_model("clip", "llama", seed=2)
  hf.save_pretrained(tmp_path)
  model = convert.from_hf(str(tmp_path))
  ids, mask, pixels = batch_with_images(hf, np.random.RandomState(1), (1, 2))
  positions = np.maximum(mask.cumsum(1) - 1, 0)
  states = hf_pre_norm_states(hf, input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                              position_ids=torch.tensor(positions),
                              pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2)))
  got = prune.layer_scores(model, [{"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}])
  np.testing.assert_allclose(got, numpy_scores(states, mask), atol=1e-5)
  image = prune.layer_scores(model, [{"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}],
                             tokens="image")
  np.testing.assert_allclose(image, numpy_scores(states, mask * (ids == 120)), atol=1e-5)


def hf_without_layers(hf, removed):
  """transformers' model with decoder layers deleted and layer_idx renumbered."""
  decoder = hf.model
  kept = [layer for i, layer in enumerate(decoder.layers) if i not in removed]
  for new, layer in enumerate(kept):
    layer.self_attn.layer_idx = new
  decoder.layers = torch.nn.ModuleList(kept)
  hf.config.num_hidden_layers = len(kept)
  if getattr(hf.config, "layer_types", None):
    hf.config.layer_types = [t for i, t in enumerate(hf.config.layer_types) if i not in removed]
  return hf


@pytest.mark.parametrize("kind", ["llama", "phi3"])
def test_drop_layers_equals_transformers_with_layers_deleted(kind, tmp_path):
  cfg = tiny_llama_config(num_hidden_layers=5, num_key_value_heads=2) if kind == "llama" else \
      tiny_phi3_config(num_hidden_layers=5)
  hf = random_hf_model(cfg)
  model = convert.from_hf(save_hf_model(hf, tmp_path / "src"))
  pruned = prune.drop_layers(model, [1, 3])
  assert len(pruned.layers) == 3 and pruned.config.num_layers == 3
  ref = hf_without_layers(hf, {1, 3})
  ids, mask = padded(np.random.RandomState(2), 128)
  positions = np.maximum(mask.cumsum(1) - 1, 0)
  with torch.no_grad():
    want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
               position_ids=torch.tensor(positions)).logits.numpy()
  got = np.asarray(pruned(jnp.asarray(ids), jnp.asarray(mask)))
  assert np.abs(got - want)[mask.astype(bool)].max() <= 1e-4
  # Greedy generation with the KV cache equals generation without it.
  prompt = ids[:1, :9]
  cached = generate.generate(pruned, prompt, max_new_tokens=8, eos_token_ids=[])
  np.testing.assert_array_equal(cached, greedy_without_cache(pruned, prompt, 8))
  # The export loads in transformers with the shallower depth and the same logits.
  out = convert.to_hf(pruned, str(tmp_path / "pruned"))
  loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
  assert loaded.config.num_hidden_layers == 3
  with torch.no_grad():
    exported = loaded(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                      position_ids=torch.tensor(positions)).logits.numpy()
  assert np.abs(exported - got)[mask.astype(bool)].max() <= 1e-4


def test_pruned_llava_exports_and_loads(tmp_path):
  hf = llava_model("siglip", "llama", seed=3)
  hf.save_pretrained(tmp_path / "src")
  pruned = prune.drop_layers(convert.from_hf(str(tmp_path / "src")), [0])
  out = convert.to_hf(pruned, str(tmp_path / "out"))
  loaded = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
  assert loaded.config.text_config.num_hidden_layers == 2
  ids, mask, pixels = batch_with_images(hf, np.random.RandomState(4), (1, 0))
  positions = np.maximum(mask.cumsum(1) - 1, 0)
  with torch.no_grad():
    want = loaded(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  position_ids=torch.tensor(positions),
                  pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2))).logits.numpy()
  got = np.asarray(pruned(jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask)))
  assert np.abs(got - want)[mask.astype(bool)].max() <= 1e-4


def test_selection_never_takes_region_layers_unless_allowed():
  scores = [0.01, 0.02, 0.5, 0.03, 0.6, 0.04]
  assert prune.layers_to_remove(scores, 2, region=(0, 1, 3)) == (2, 5)
  assert prune.layers_to_remove(scores, 2, region=(0, 1, 3), allow_region=True) == (0, 1)
  assert prune.layers_to_remove(scores, 2, region=(1,), contiguous=True) == (3, 4)
  assert prune.layers_to_remove([0.9, 0.8, 0.7, 0.1], 2, contiguous=True) == (2, 3)  # fits
  assert prune.remap_layers((0, 1, 3, 5), (2, 4)) == (0, 1, 2, 3)


@pytest.mark.parametrize("call, key", [
    (lambda: prune.layers_to_remove([0.1] * 6, 3, region=(0, 1, 2)), "prune.k"),
    (lambda: prune.layers_to_remove([0.1] * 6, 0), "prune.k"),
    (lambda: prune.layers_to_remove([0.1] * 4, 3, region=(1,), contiguous=True), "prune.k"),
])
def test_bad_selection(call, key):
  with pytest.raises(VisRegionError, match=key):
    call()


def test_empty_calibration_and_bad_layers(tmp_path):
  hf = random_hf_model(tiny_llama_config())
  model = convert.from_hf(save_hf_model(hf, tmp_path))
  with pytest.raises(VisRegionError, match="calibration"):
    prune.layer_scores(model, [])
  with pytest.raises(VisRegionError, match="prune.layers"):
    prune.drop_layers(model, [7])
  with pytest.raises(VisRegionError, match="prune.layers"):
    prune.drop_layers(model, [0, 1, 2])
