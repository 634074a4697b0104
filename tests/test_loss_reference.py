"""The training loss and gradients against references that share no code with ours.

transformers' LlavaForConditionalGeneration computes the loss (and, by backprop in
PyTorch, the gradients) of the same weights, and a numpy cross-entropy written out
by hand recomputes the loss from transformers' logits. The batch is what makes this
hard: left padding, rows with very different numbers of supervised tokens, a
text-only row beside rows with one and two images (the pipeline's fixed image axis
then holds padding images), and gradient accumulation that splits it all into
micro-batches. The loss must be the mean over every supervised token of the batch,
not a mean of micro-batch means.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from conftest import random_llava_model, tiny_llama_config
from flax import nnx

from visregion_jax import convert
from visregion_jax.data import pipeline
from visregion_jax.data.image_processing import ImageProcessorConfig
from visregion_jax.data.tokenize import IGNORE_INDEX as IGNORE
from visregion_jax.plan import TrainingPlan
from visregion_jax.train.step import make_train_step

IMAGE_TOKEN = 120
IMAGE = 14  # 2x2 patches of 7: 4 features per image under "default"
MAX_IMAGES = 2
REGION_LAYERS = (1,)
# (images, answer tokens) per row: supervised counts far apart so that micro-batch
# means and the token-weighted mean differ.
ROWS = ((1, 2), (0, 9), (2, 1), (1, 14))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """(transformers model, our LVLM converted from its saved directory), fp32."""
  vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=IMAGE, patch_size=7)
  text = tiny_llama_config(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_key_value_heads=2)
  hf = random_llava_model(transformers.LlavaConfig(vision_config=vision, text_config=text,
                                                   image_token_id=IMAGE_TOKEN), seed=3)
  with torch.no_grad():  # peaked predictions: per-token losses far apart, not all near log(V)
    hf.lm_head.weight.mul_(20.0)
  path = str(tmp_path_factory.mktemp("llava"))
  hf.save_pretrained(path)
  return hf, convert.from_hf(path, dtype="float32")


def left_padded_batch(features_per_image: int) -> dict:
  """The pipeline's batch of ROWS (its collate lays out the image axis), moved to left padding."""
  rng = np.random.RandomState(0)
  records = []
  for index, (num_images, answer_len) in enumerate(ROWS):
    prompt = [rng.randint(3, 110, size=2)]
    for _ in range(num_images):
      prompt += [np.full(features_per_image, IMAGE_TOKEN), rng.randint(3, 110, size=2)]
    prompt = np.concatenate(prompt)
    answer = rng.randint(3, 110, size=answer_len)
    records.append({"index": index, "input_ids": np.concatenate([prompt, answer]),
                    "labels": np.concatenate([np.full(len(prompt), IGNORE), answer]),
                    "pixel_values": rng.randn(num_images, IMAGE, IMAGE, 3).astype(np.float32)})
  width = max(len(r["input_ids"]) for r in records) + 2  # every row has some padding
  config = pipeline.DataConfig(
      template="tokenizer", max_length=width, global_batch_size=len(ROWS),
      image_token_id=IMAGE_TOKEN, num_image_tokens=features_per_image,
      image=ImageProcessorConfig(kind="clip", size=IMAGE, crop_size=IMAGE,
                                 image_mean=(0.5,) * 3, image_std=(0.5,) * 3),
      max_images_per_sample=MAX_IMAGES)
  batch = pipeline.collate(records, config)
  batch.pop("index")
  for row, mask in enumerate(batch["attention_mask"]):
    shift = width - int(mask.sum())  # right padding -> left padding
    for key in ("input_ids", "labels", "attention_mask"):
      batch[key][row] = np.roll(batch[key][row], shift)
  assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
  return batch


def hf_forward(hf, batch: dict, with_grad: bool = False):
  """transformers' output with labels; positions count real tokens from 0, as ours do."""
  mask = batch["attention_mask"]
  images = batch["pixel_values"][batch["image_mask"]]  # the real images, in row order
  with torch.set_grad_enabled(with_grad):
    return hf(input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
              attention_mask=torch.tensor(mask, dtype=torch.long),
              position_ids=torch.tensor(np.maximum(mask.cumsum(1) - 1, 0), dtype=torch.long),
              pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)),
              labels=torch.tensor(batch["labels"], dtype=torch.long))


def hand_token_losses(logits: np.ndarray, labels: np.ndarray):
  """Per-position next-token cross-entropy [B, T-1] (float64) and the supervised mask."""
  z = logits[:, :-1].astype(np.float64)
  z = z - z.max(-1, keepdims=True)
  log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
  targets = labels[:, 1:]
  supervised = targets != IGNORE
  picked = np.take_along_axis(log_probs, np.where(supervised, targets, 0)[..., None], -1)[..., 0]
  return np.where(supervised, -picked, 0.0), supervised


def keep_gradients() -> optax.GradientTransformation:
  """An optimizer that leaves the parameters alone and keeps the step's gradient as its
  state, so the gradient is read exactly rather than as a parameter difference."""
  return optax.GradientTransformation(
      lambda params: jax.tree.map(jnp.zeros_like, params),
      lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def step_loss_and_grads(model, batch: dict, accum: int):
  """(loss, {path: gradient}) of one jitted train step, the trainable set as train.py's."""
  graphdef, params, frozen, rest = TrainingPlan(region_layers=tuple(sorted(REGION_LAYERS))).split(model)
  tx = keep_gradients()
  step = jax.jit(make_train_step(graphdef, tx, accum, seed=0))
  _, _, grads, metrics = step(params, frozen, rest, tx.init(params), batch, 0)
  assert bool(metrics["finite"])
  assert int(metrics["supervised_tokens"]) == sum(n for _, n in ROWS)
  return float(metrics["loss"]), {tuple(p): np.asarray(v.get_value())
                                  for p, v in nnx.to_flat_state(grads)}


def hf_name(path: tuple) -> tuple:
  """transformers' parameter name for one of our trainable paths, and whether to transpose."""
  *where, leaf = [str(p) for p in path]
  if where[0] == "projector":
    where = ["multi_modal_projector", f"linear_{int(where[2]) + 1}"]
  name = "model." + ".".join(where) + "." + {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
  return name, leaf == "kernel"


@pytest.fixture(scope="module")
def reference(models):
  """The batch, transformers' loss and per-parameter gradients, and the hand CE terms."""
  hf, ours = models
  batch = left_padded_batch(ours.config.num_image_tokens)
  hf.zero_grad()
  out = hf_forward(hf, batch, with_grad=True)
  out.loss.backward()
  grads = {name: p.grad.numpy().copy() for name, p in hf.named_parameters() if p.grad is not None}
  losses, supervised = hand_token_losses(out.logits.detach().numpy(), batch["labels"])
  return batch, out.loss.item(), grads, losses, supervised


@pytest.fixture(scope="module")
def steps(models, reference):
  """{accum: (loss, gradients)} of our step on the reference batch (compiled once each)."""
  return {accum: step_loss_and_grads(models[1], reference[0], accum) for accum in (1, 2, 4)}


def test_batch_is_hard_enough(reference):
  """The cases the loss must handle are really in the batch."""
  batch, _, _, _, supervised = reference
  assert (batch["attention_mask"][:, 0] == 0).all() and (batch["attention_mask"][:, -1] == 1).all()
  assert supervised.sum(1).tolist() == [n for _, n in ROWS]
  assert not batch["image_mask"].all()  # padding images in the image axis


def test_hand_cross_entropy_equals_transformers_loss(reference):
  """Guards the hand reference itself: the two independent losses agree."""
  _, hf_loss, _, losses, supervised = reference
  np.testing.assert_allclose(losses.sum() / supervised.sum(), hf_loss, rtol=1e-6)


@pytest.mark.parametrize("accum", [1, 2, 4])
def test_step_loss_and_grads_equal_transformers(reference, steps, accum):
  _, hf_loss, hf_grads, losses, supervised = reference
  loss, grads = steps[accum]
  np.testing.assert_allclose(loss, losses.sum() / supervised.sum(), rtol=1e-5)
  np.testing.assert_allclose(loss, hf_loss, rtol=1e-5)
  assert {p[0] for p in grads} == {"projector", "language_model"}
  for path, g in grads.items():
    name, transpose = hf_name(path)
    np.testing.assert_allclose(g, hf_grads[name].T if transpose else hf_grads[name],
                               atol=1e-5, err_msg=name)


@pytest.mark.parametrize("accum", [2, 4])
def test_accumulated_step_equals_single_step(reference, steps, accum):
  """The loss is the token-weighted mean over the whole batch, which here is far from the
  mean of the micro-batch means; the gradients are those of one big step."""
  _, _, _, losses, supervised = reference
  loss, grads = steps[accum]
  single_loss, single_grads = steps[1]
  per_micro = [l.sum() / s.sum() for l, s in zip(np.split(losses, accum), np.split(supervised, accum))]
  token_weighted = losses.sum() / supervised.sum()
  assert abs(np.mean(per_micro) - token_weighted) > 1e-2
  np.testing.assert_allclose(loss, token_weighted, rtol=1e-5)
  np.testing.assert_allclose(loss, single_loss, rtol=1e-6)
  for path, g in grads.items():
    np.testing.assert_allclose(g, single_grads[path], atol=1e-5, err_msg=str(path))


def test_tiled_step_equals_transformers(models, reference):
  """The loss in tiles of each row (model.loss_tiles=3: tiled_loss.py, never the whole
  logits), over 2 micro-batches: the same loss and gradients as transformers'."""
  _, hf_loss, hf_grads, _, _ = reference
  model = nnx.clone(models[1])
  model.language_model.config = model.language_model.config.replace(loss_tiles=3)
  loss, grads = step_loss_and_grads(model, reference[0], 2)
  np.testing.assert_allclose(loss, hf_loss, rtol=1e-5)
  for path, g in grads.items():
    name, transpose = hf_name(path)
    np.testing.assert_allclose(g, hf_grads[name].T if transpose else hf_grads[name], atol=1e-5, err_msg=name)
