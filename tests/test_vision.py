"""The CLIP / SigLIP towers are transformers' models: hidden states, LLaVA features and
pooled outputs within 1e-4 in float32; HF -> JAX -> HF is bit-exact and loadable."""

import os

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from conftest import save_hf_model
from safetensors.numpy import load_file, save_file

from visregion_jax.convert import vision_config
from visregion_jax.convert.vision import vision_tower_from_hf, vision_tower_to_hf
from visregion_jax.errors import VisRegionError

CONFIGS = {
    "clip": transformers.CLIPVisionConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        image_size=42, patch_size=14),
    "siglip": transformers.SiglipVisionConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        image_size=28, patch_size=7, vision_use_head=True),
    "siglip_no_head": transformers.SiglipVisionConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        image_size=28, patch_size=14, vision_use_head=False, hidden_act="gelu"),
}
FEATURE_LAYERS = ((-2,), (-1,), (-3, -1), (0, 2))


def random_vision_model(name: str, seed: int = 0):
  """Norms, biases and embeddings moved away from their trivial init."""
  torch.manual_seed(seed)
  config = CONFIGS[name]
  cls = transformers.CLIPVisionModel if config.model_type == "clip_vision_model" else \
      transformers.SiglipVisionModel
  model = cls(config).eval()
  with torch.no_grad():
    for key, p in model.named_parameters():
      if "norm" in key or key.endswith("bias") or "embedding" in key or "probe" in key:
        p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def towers(request, tmp_path_factory):
  hf = random_vision_model(request.param)
  path = save_hf_model(hf, tmp_path_factory.mktemp(request.param))
  return hf, vision_tower_from_hf(path, dtype="float32")


def images(config, n: int = 2) -> np.ndarray:
  """Random normalized images, NHWC."""
  rng = np.random.RandomState(1)
  return rng.randn(n, config.image_size, config.image_size, config.num_channels).astype(np.float32)


def assert_close(ours, ref):
  np.testing.assert_array_less(np.abs(np.asarray(ours) - ref.numpy()).max(), 1e-4)


def test_hidden_states_features_and_pooled_match_transformers(towers):
  hf, tower = towers
  pixels = images(hf.config)
  with torch.no_grad():
    out = hf(torch.tensor(pixels.transpose(0, 3, 1, 2)), output_hidden_states=True)
  ref = out.hidden_states
  ours = tower.hidden_states(jnp.asarray(pixels))
  assert len(ours) == len(ref) == hf.config.num_hidden_layers + 1
  for mine, theirs in zip(ours, ref):
    assert_close(mine, theirs)
  for layers in FEATURE_LAYERS:
    for strategy in ("default", "full"):
      states = [ref[i][:, 1:] if strategy == "default" else ref[i] for i in layers]
      assert_close(tower.features(jnp.asarray(pixels), layers, strategy), torch.cat(states, dim=-1))
  if out.pooler_output is not None:
    assert_close(tower.pooled(jnp.asarray(pixels)), out.pooler_output)


def test_partial_hidden_states_run_only_the_needed_layers(towers):
  _, tower = towers
  pixels = jnp.asarray(images(tower.config, n=1))
  full = tower.hidden_states(pixels)
  part = tower.hidden_states(pixels, num_layers=1)
  assert len(part) == 2
  np.testing.assert_array_equal(np.asarray(part[1]), np.asarray(full[1]))


def all_tensors(directory) -> dict:
  return load_file(os.path.join(directory, "model.safetensors"))


def without_prefix(tensors: dict) -> dict:
  return {k.removeprefix("vision_model."): v for k, v in tensors.items()}


@pytest.mark.parametrize("name", ["clip", "siglip", "siglip_no_head"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_bit_exact_and_loadable(name, dtype, tmp_path):
  hf = random_vision_model(name).to(dtype)
  src = save_hf_model(hf, tmp_path / "src")
  tower = vision_tower_from_hf(src)
  dst = vision_tower_to_hf(tower, str(tmp_path / "dst"))
  original, exported = all_tensors(src), all_tensors(dst)
  assert all(k.startswith("vision_model.") for k in exported)
  exported = without_prefix(exported)
  assert sorted(original) == sorted(exported)
  for k, a in original.items():
    b = exported[k]
    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), k
  if dtype == torch.bfloat16:
    assert original["post_layernorm.weight"].dtype == ml_dtypes.bfloat16
  loaded = transformers.AutoModel.from_pretrained(dst)
  assert type(loaded) is type(hf) and loaded.dtype == dtype
  pixels = torch.tensor(images(hf.config).transpose(0, 3, 1, 2), dtype=dtype)
  with torch.no_grad():
    torch.testing.assert_close(loaded(pixels).last_hidden_state, hf(pixels).last_hidden_state,
                               atol=0, rtol=0)
  again = vision_tower_to_hf(vision_tower_from_hf(dst), str(tmp_path / "again"))  # prefixed input
  assert without_prefix(all_tensors(again)).keys() == original.keys()


def test_hub_layout_with_legacy_buffer_loads_and_extra_tensor_fails(tmp_path):
  """Hub / transformers 4 files: "vision_model." keys, plus the old position_ids buffer."""
  hf = random_vision_model("clip")
  src = save_hf_model(hf, tmp_path)
  tensors = {"vision_model." + k: v for k, v in all_tensors(src).items()}
  tensors["vision_model.embeddings.position_ids"] = np.arange(10)[None]
  save_file(tensors, os.path.join(src, "model.safetensors"))
  tower = vision_tower_from_hf(src, dtype="float32")
  np.testing.assert_array_equal(np.asarray(tower.class_embedding[...]),
                                hf.embeddings.class_embedding.detach().numpy())
  tensors["vision_model.head.probe"] = np.zeros((1, 1, 64), np.float32)
  save_file(tensors, os.path.join(src, "model.safetensors"))
  with pytest.raises(VisRegionError, match="vision_model.head.probe"):
    vision_tower_from_hf(src)


BAD_VALUES = {
    "model_type": "vit",
    "hidden_act": "relu",
    "num_attention_heads": 5,
    "layer_norm_eps": -1.0,
    "image_size": 0,
    "vision_use_head": "yes",
    "dtype": "int8",
}


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_bad_config_value_names_the_key(key):
  d = CONFIGS["siglip"].to_dict()
  d[key] = BAD_VALUES[key]
  with pytest.raises(VisRegionError, match=f"config.json: {key}"):
    vision_config.vision_config_from_hf(d, "config.json")


def test_bad_inputs_name_what_is_wrong(towers):
  _, tower = towers
  pixels = jnp.asarray(images(tower.config, n=1))
  with pytest.raises(VisRegionError, match="pixel_values"):
    tower.hidden_states(pixels.transpose(0, 3, 1, 2))
  with pytest.raises(VisRegionError, match="feature_layers"):
    tower.features(pixels, (len(tower.layers) + 1,), "default")
  with pytest.raises(VisRegionError, match="feature_strategy"):
    tower.features(pixels, (-2,), "cls_patch")


def test_sparse_llava_vision_config_takes_transformers_defaults():
  """LLaVA checkpoints list only non-default keys; ours must equal transformers' reading."""
  sparse = {"model_type": "clip_vision_model", "hidden_size": 1024, "image_size": 336,
            "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
            "patch_size": 14, "projection_dim": 768}
  ours = vision_config.vision_config_from_hf(sparse, "vision_config")
  theirs = transformers.CLIPVisionConfig(**sparse)
  assert (ours.hidden_act, ours.layer_norm_eps, ours.num_channels, ours.num_positions) == \
      (theirs.hidden_act, theirs.layer_norm_eps, theirs.num_channels, 577)
  exported = vision_config.vision_config_to_hf(ours)
  assert exported["projection_dim"] == 768 and exported["hidden_act"] == "quick_gelu"
