"""`model.attention` through the models: the decoder and the vision tower compute the same
with the fused kernels (Pallas interpret mode) as with XLA; decoding with a KV cache
stays on XLA; bad choices are config errors; the shard_map layout of the kernels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import randomized
from flax import nnx

from visregion_jax import convert
from visregion_jax.errors import VisRegionError
from visregion_jax.models import attention
from visregion_jax.models.attention_choice import set_attention
from visregion_jax.models.attention_mesh import layout
from visregion_jax.models.config import DecoderConfig
from visregion_jax.models.llama import Decoder
from visregion_jax.models.lvlm import LVLM, LVLMConfig
from visregion_jax.models.vision import VisionConfig, VisionTower

ATOL = 1e-5


def decoder(window=None) -> Decoder:
  config = DecoderConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=8, sliding_window=window)
  return randomized(Decoder(config, rngs=nnx.Rngs(0)), 1)


def padded_batch(rng):
  """Left padding in row 0, right padding in row 1; 150 tokens (a block and a part)."""
  ids = rng.randint(0, 96, size=(2, 150)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[0, :31] = 0
  mask[1, 111:] = 0
  return {"attention_mask": mask}, ids, mask


def packed_batch(rng):
  """Three samples and padding in one row, a second row of two samples."""
  ids = rng.randint(0, 96, size=(2, 150)).astype(np.int32)
  seg = np.zeros_like(ids)
  seg[0, :40], seg[0, 40:101], seg[0, 101:140] = 1, 2, 3
  seg[1, :75], seg[1, 75:] = 1, 2
  return {"segment_ids": seg}, ids, (seg > 0).astype(np.int32)


@pytest.mark.parametrize("implementation", ["splash", "gpu"])
@pytest.mark.parametrize("batch, window", [(padded_batch, None), (packed_batch, 24)], ids=["padded", "packed_window"])
def test_decoder_logits_equal_xla(implementation, batch, window):
  model = decoder(window)
  inputs, ids, real = batch(np.random.RandomState(0))
  forward = nnx.jit(lambda m, ids, inputs: m.forward(ids, **inputs).logits)
  want = np.asarray(forward(model, ids, inputs))
  set_attention(model, implementation, True)
  got = np.asarray(forward(model, ids, inputs))
  keep = real[..., None] == 1
  np.testing.assert_allclose(np.where(keep, got, 0), np.where(keep, want, 0), atol=ATOL, rtol=0)


@pytest.mark.parametrize("implementation", ["splash", "gpu"])
def test_vision_tower_equals_xla(implementation):
  """Bidirectional, 17 tokens (16 patches and CLS) padded to a block inside the kernel."""
  config = VisionConfig(kind="clip", hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                        image_size=28, patch_size=7)
  tower = randomized(VisionTower(config, rngs=nnx.Rngs(0)), 2)
  pixels = jax.random.normal(jax.random.key(3), (2, 28, 28, 3))
  want = np.asarray(tower.features(pixels, (-1,), "full"))
  set_attention(tower, implementation, True)
  got = np.asarray(tower.features(pixels, (-1,), "full"))
  np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_decoding_with_a_cache_stays_on_xla():
  """A model set to "splash" (not interpreted: it could not compile on CPU) still decodes:
  every forward with a KV cache runs the XLA path."""
  model = decoder()
  ids = jnp.asarray(np.random.RandomState(1).randint(0, 96, size=(1, 6)), jnp.int32)
  want = model.forward(ids, cache=model.init_cache(1, 8)).logits
  model.config = model.config.replace(attention="splash")
  got = model.forward(ids, cache=model.init_cache(1, 8)).logits
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=ATOL, rtol=0)
  with pytest.raises(VisRegionError, match="model.attention"):
    model.forward(ids)  # without a cache, "splash" is asked of a CPU


def test_auto_is_xla_on_cpu():
  assert attention.resolve("auto", False) == "xla"
  assert attention.resolve("auto", True) == "xla"
  assert attention.resolve("gpu", True) == "gpu"


@pytest.mark.parametrize("choice, interpret, key, words", [
    ("flash", False, "model.attention", "expected one of ['auto', 'xla', 'splash', 'gpu']"),
    ("splash", False, "model.attention", "compiles for TPU only"),
    ("gpu", False, "model.attention", "compiles for GPU only"),
    ("xla", "yes", "model.attention_interpret", "expected True or False"),
])
def test_bad_choice(choice, interpret, key, words):
  with pytest.raises(VisRegionError) as e:
    attention.check_choice(choice, interpret)
  assert e.value.where == key and words in e.value.expected


def test_from_hf_checks_the_choice_before_reading():
  with pytest.raises(VisRegionError) as e:
    convert.from_hf("/no/such/model", attention="flash")
  assert e.value.where == "attention"


def test_set_attention_on_an_lvlm():
  text = DecoderConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4,
                       num_kv_heads=2, head_dim=8)
  vision = VisionConfig(kind="clip", hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4,
                        image_size=14, patch_size=7)
  model = LVLM(LVLMConfig(text=text, vision=vision, image_token_id=95), rngs=nnx.Rngs(0))
  set_attention(model, "gpu", True)
  for config in (model.language_model.config, model.vision_tower.config, model.config.text, model.config.vision):
    assert (config.attention, config.attention_interpret) == ("gpu", True)


@pytest.mark.parametrize("mesh, batch, heads, kv_heads, want", [
    ({"data": 2, "fsdp": 2, "tensor": 2}, 4, 8, 2, (("data", "fsdp"), "tensor")),
    ({"data": 2, "fsdp": 2, "tensor": 2}, 2, 8, 1, (("data",), None)),  # MQA: one KV head stays whole
    ({"data": 1, "fsdp": 8, "tensor": 1}, 16, 4, 4, (("fsdp",), None)),
    ({"data": 1, "fsdp": 4, "tensor": 2}, 3, 4, 4, (None, "tensor")),   # an odd batch stays whole
    ({"data": 1, "fsdp": 1, "tensor": 1}, 4, 4, 4, (None, None)),
])
def test_mesh_layout(mesh, batch, heads, kv_heads, want):
  assert layout(mesh, batch, heads, kv_heads) == want
