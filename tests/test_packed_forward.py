"""Packed rows (`segment_ids`): each sample computes exactly as it would alone.

Llama, Phi-3 with a sliding window shorter than the samples, and an LVLM (CLIP +
Llama) whose row holds two samples with images and one text-only sample. Random
weights with moved norms, so a position or mask mistake changes the numbers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import randomized
from flax import nnx

from visregion_jax.loss import token_losses
from visregion_jax.models.config import DecoderConfig
from visregion_jax.models.llama import Decoder
from visregion_jax.models.lvlm import LVLM, LVLMConfig
from visregion_jax.models.vision import VisionConfig

VOCAB, IMAGE_TOKEN = 96, 95


def decoder_config(architecture: str) -> DecoderConfig:
  window = 5 if architecture == "phi3" else None
  return DecoderConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8, sliding_window=window, architecture=architecture)


def lvlm() -> LVLM:
  vision = VisionConfig(kind="clip", hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                        image_size=14, patch_size=7)
  config = LVLMConfig(text=decoder_config("llama"), vision=vision, image_token_id=IMAGE_TOKEN)
  return randomized(LVLM(config, rngs=nnx.Rngs(0)), 1)


def samples(rng, image_tokens: int = 0):
  """Three samples: two with an image (when image_tokens > 0), one text-only."""
  out = []
  for n, images in ((7, 1), (9, 1), (6, 0)):
    ids = rng.randint(1, IMAGE_TOKEN, size=n)
    if image_tokens and images:
      ids = np.concatenate([ids[:2], np.full(image_tokens, IMAGE_TOKEN), ids[2:]])
    out.append(ids.astype(np.int32))
  return out


def packed_row(parts, length: int):
  ids = np.zeros((1, length), np.int32)
  segments = np.zeros((1, length), np.int32)
  start = 0
  for i, part in enumerate(parts):
    ids[0, start:start + len(part)] = part
    segments[0, start:start + len(part)] = i + 1
    start += len(part)
  return ids, segments


@nnx.jit
def logits_of(model, ids, segment_ids=None, pixel_values=None):
  extra = {"pixel_values": pixel_values} if pixel_values is not None else {}
  return model.forward(ids, segment_ids=segment_ids, **extra).logits[0]


def alone_logits(model, part, pixels):
  return np.asarray(logits_of(model, jnp.asarray(part[None]), None, pixels))


MODELS = {"llama": lambda: randomized(Decoder(decoder_config("llama"), rngs=nnx.Rngs(0)), 1),
          "phi3_window": lambda: randomized(Decoder(decoder_config("phi3"), rngs=nnx.Rngs(0)), 2),
          "lvlm": lvlm}


def model_and_samples(name):
  model = MODELS[name]()
  per_image = model.config.num_image_tokens if name == "lvlm" else 0
  parts = samples(np.random.RandomState(0), per_image)
  pixels = None
  if name == "lvlm":
    pixels = np.random.RandomState(1).randn(2, 14, 14, 3).astype(np.float32)
  return model, parts, pixels


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_segment_equals_the_sample_alone(name):
  model, parts, pixels = model_and_samples(name)
  ids, segments = packed_row(parts, sum(len(p) for p in parts) + 4)  # right padding too
  pixel_values = jnp.asarray(pixels) if pixels is not None else None
  packed = np.asarray(logits_of(model, jnp.asarray(ids), jnp.asarray(segments), pixel_values))
  start, image = 0, 0
  for part in parts:
    has_image = pixels is not None and IMAGE_TOKEN in part
    alone = alone_logits(model, part, jnp.asarray(pixels[image:image + 1]) if has_image else None)
    image += has_image
    np.testing.assert_allclose(packed[start:start + len(part)], alone, atol=1e-5, rtol=0)
    start += len(part)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_changing_one_sample_leaves_the_others_bit_unchanged(name):
  model, parts, pixels = model_and_samples(name)
  pixel_values = jnp.asarray(pixels) if pixels is not None else None
  ids, segments = packed_row(parts, sum(len(p) for p in parts))
  changed = [parts[0], parts[1].copy(), parts[2]]
  changed[1][-1] = (changed[1][-1] % (IMAGE_TOKEN - 2)) + 1
  ids2, _ = packed_row(changed, ids.shape[1])
  a = np.asarray(logits_of(model, jnp.asarray(ids), jnp.asarray(segments), pixel_values))
  b = np.asarray(logits_of(model, jnp.asarray(ids2), jnp.asarray(segments), pixel_values))
  bounds = np.cumsum([0] + [len(p) for p in parts])
  for i in (0, 2):
    np.testing.assert_array_equal(a[bounds[i]:bounds[i + 1]], b[bounds[i]:bounds[i + 1]])
  assert not np.array_equal(a[bounds[1]:bounds[2]], b[bounds[1]:bounds[2]])


def labelled(parts):
  """Labels as the packer writes them: every token supervised but each sample's first
  (which no position of the previous sample may be trained to predict)."""
  return [np.concatenate([[-100], p[1:]]).astype(np.int32) for p in parts]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_packed_loss_and_gradients_equal_unpacked(name):
  model, parts, pixels = model_and_samples(name)
  labels = labelled(parts)
  length = sum(len(p) for p in parts) + 3
  ids, segments = packed_row(parts, length)
  packed_labels = np.full((1, length), -100, np.int32)
  packed_labels[0, :length - 3] = np.concatenate(labels)
  packed_labels[np.isin(ids, [IMAGE_TOKEN])] = -100
  width = max(len(p) for p in parts)
  rows = np.zeros((3, width), np.int32)
  row_labels = np.full((3, width), -100, np.int32)
  mask = np.zeros((3, width), np.int32)
  for i, (p, lab) in enumerate(zip(parts, labels)):
    rows[i, :len(p)], row_labels[i, :len(p)], mask[i, :len(p)] = p, np.where(p == IMAGE_TOKEN, -100, lab), 1
  packed = {"input_ids": ids, "labels": packed_labels, "attention_mask": (segments > 0).astype(np.int32),
            "segment_ids": segments}
  unpacked = {"input_ids": rows, "labels": row_labels, "attention_mask": mask}
  if pixels is not None:
    packed.update(pixel_values=pixels, image_mask=np.ones(2, bool))
    # rows 0 and 1 hold one image each, row 2 none: two slots per row, in row order
    slots = np.zeros((6, 14, 14, 3), np.float32)
    slots[0], slots[2] = pixels
    unpacked.update(pixel_values=slots, image_mask=np.array([1, 0, 1, 0, 0, 0], bool))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, batch):
    total, count = token_losses(nnx.merge(graphdef, params, rest), jax.tree.map(jnp.asarray, batch))
    return total / count

  grad_fn = jax.jit(jax.value_and_grad(loss))
  (a, ga), (b, gb) = (grad_fn(params, batch) for batch in (packed, unpacked))
  np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)
