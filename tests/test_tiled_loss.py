"""The vocabulary-tiled loss (tiled_loss.py) equals the plain one, costs less memory,
and computes no weight gradient for a frozen head.

fp32 throughout except where bf16 is named: losses within 1e-6 of optax's
cross-entropy over the full logits, gradients (hidden states, the head, and every
parameter of a tiny model) within 1e-5, for the tied embedding and an untied head,
with left padding, ignored labels, packed rows, tiles that do not divide the row and
a vocabulary that no tile count divides; and through the real train step with
gradient accumulation. The same on 8 simulated devices is tests/run_tiled_loss_mesh.py.
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import randomized, run_on_8_devices
from flax import nnx

from visregion_jax import loss, tiled_loss
from visregion_jax.data.tokenize import IGNORE_INDEX as IGNORE
from visregion_jax.models.config import DecoderConfig
from visregion_jax.models.llama import Decoder
from visregion_jax.plan import TrainingPlan
from visregion_jax.train.step import make_train_step

VOCAB = 97  # prime: no tile count divides it


def plain_losses(hidden, weight, targets, vocab_major):
  """The plain path's cross-entropy, on the same [B, T] layout."""
  logits = (hidden @ (weight.T if vocab_major else weight)).astype(jnp.float32)
  supervised = targets != IGNORE
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(supervised, targets, 0))
  return jnp.where(supervised, losses, 0.0)


def head_inputs(vocab_major: bool, dtype=jnp.float32, rows=3, seq=13, embed=16):
  rng = np.random.RandomState(0)
  hidden = jnp.asarray(rng.randn(rows, seq, embed), dtype)
  weight = jnp.asarray(0.5 * rng.randn(*((VOCAB, embed) if vocab_major else (embed, VOCAB))), dtype)
  targets = rng.randint(0, VOCAB, size=(rows, seq))
  targets[0, :5] = IGNORE   # a prompt
  targets[1, 9:] = IGNORE   # padding
  targets[:, -1] = IGNORE   # the last position predicts nothing
  cotangent = jnp.asarray(rng.rand(rows, seq), jnp.float32)  # unequal per-token weights
  return hidden, weight, jnp.asarray(targets), cotangent


def test_tile_tokens_by_setting():
  assert tiled_loss.tile_tokens(1, 16, 2048, 32064) == 2048                # plain
  assert tiled_loss.tile_tokens(3, 1, 10, VOCAB) == 4                       # 4 + 4 + 2
  assert tiled_loss.tile_tokens(50, 1, 10, VOCAB) == 1                      # at most one tile per position
  assert tiled_loss.tile_tokens(0, 1, 512, 32000) == 512                    # 62.5 MiB: under the threshold
  assert tiled_loss.tile_tokens(0, 2, 1024, 32000) == 256                   # 250 MiB: 4 tiles of <= 64 MiB
  tiles = math.ceil(16 * 2048 * 32064 * 4 / tiled_loss.AUTO_TILE_BYTES)     # 63 tiles of <= 64 MiB
  assert tiled_loss.tile_tokens(0, 16, 2048, 32064) == math.ceil(2048 / tiles) == 33


@pytest.mark.parametrize("vocab_major", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("tile", [13, 5, 4, 1])
def test_tiled_equals_plain(vocab_major, tile):
  """Losses and the gradients of a weighted sum of them, w.r.t. the hidden states and
  the head, for tiles that divide the row (13, 1) and that do not (5, 4)."""
  hidden, weight, targets, cotangent = head_inputs(vocab_major)
  tiled = lambda h, w: tiled_loss.token_losses(h, w, targets, vocab_major=vocab_major, tile=tile)
  plain = lambda h, w: plain_losses(h, w, targets, vocab_major)
  np.testing.assert_allclose(tiled(hidden, weight), plain(hidden, weight), atol=1e-6, rtol=0)
  weighted = lambda f: jax.grad(lambda h, w: jnp.sum(f(h, w) * cotangent), argnums=(0, 1))
  for got, want in zip(weighted(tiled)(hidden, weight), weighted(plain)(hidden, weight)):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  assert float(jnp.abs(weighted(tiled)(hidden, weight)[0][1, 9:]).max()) == 0.0  # ignored: no gradient


def test_bf16_follows_the_plain_numerics():
  """bf16 hidden states and head: logits in bf16, then fp32, as the plain path does."""
  hidden, weight, targets, cotangent = head_inputs(False, jnp.bfloat16)
  tiled = tiled_loss.token_losses(hidden, weight, targets, vocab_major=False, tile=4)
  np.testing.assert_allclose(tiled, plain_losses(hidden, weight, targets, False), atol=1e-6, rtol=0)
  grad = lambda f: jax.grad(lambda h: jnp.sum(f(h) * cotangent))(hidden)
  got = grad(lambda h: tiled_loss.token_losses(h, weight, targets, vocab_major=False, tile=4))
  want = grad(lambda h: plain_losses(h, weight, targets, False))
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=2e-2, rtol=2e-2)


def while_loops(fn, *args) -> int:
  return jax.jit(fn).lower(*args).compile().as_text().count(" while(")


def test_frozen_head_gets_no_weight_gradient_loop():
  """Differentiated w.r.t. the hidden states only (the head frozen, as the training plan
  always has it), the compiled gradient holds the forward loop alone: the backward's
  weight-gradient loop, whose result is unused, is removed by XLA."""
  hidden, weight, targets, _ = head_inputs(False)
  total = lambda h, w: jnp.sum(tiled_loss.token_losses(h, w, targets, vocab_major=False, tile=4))
  assert while_loops(jax.grad(total, argnums=0), hidden, weight) == 1
  assert while_loops(jax.grad(total, argnums=(0, 1)), hidden, weight) == 2


def test_compiled_memory_is_much_smaller():
  """loss + gradients for 2048 tokens x a 32000 vocabulary (E = 256): XLA's temporaries
  with 8 tiles against the full fp32 logits (250 MiB)."""
  rows, seq, embed, vocab = 2, 1024, 256, 32000
  hidden = jax.ShapeDtypeStruct((rows, seq, embed), jnp.float32)
  weight = jax.ShapeDtypeStruct((embed, vocab), jnp.float32)
  targets = jax.ShapeDtypeStruct((rows, seq), jnp.int32)

  def temp_bytes(losses):
    fn = jax.value_and_grad(lambda h, w, t: jnp.sum(losses(h, w, t)), argnums=(0, 1))
    return jax.jit(fn).lower(hidden, weight, targets).compile().memory_analysis().temp_size_in_bytes

  plain = temp_bytes(lambda h, w, t: plain_losses(h, w, t, False))
  tiled = temp_bytes(lambda h, w, t: tiled_loss.token_losses(h, w, t, vocab_major=False, tile=seq // 8))
  print(f"temporaries: plain {plain / 2 ** 20:.0f} MiB, 8 tiles {tiled / 2 ** 20:.0f} MiB, "
        f"ratio {tiled / plain:.3f}")
  assert plain > rows * seq * vocab * 4  # at least the fp32 logits
  assert tiled < 0.5 * plain


# --- through a model ------------------------------------------------------------------
def decoder(tied: bool, tiles: int) -> Decoder:
  config = DecoderConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=8, tie_word_embeddings=tied, loss_tiles=tiles)
  return randomized(Decoder(config, rngs=nnx.Rngs(0)), 1)


def text_batch(packed: bool) -> dict:
  """4 rows of 18: left padding and a prompt, or (packed) three samples per row whose
  first tokens are unsupervised, and padding at the end."""
  rng = np.random.RandomState(1)
  ids = rng.randint(0, VOCAB, size=(4, 18)).astype(np.int32)
  if packed:
    segments = np.zeros_like(ids)
    for r, lengths in enumerate(((6, 7, 3), (9, 9, 0), (4, 4, 4), (17, 0, 0))):
      edges = np.cumsum((0,) + lengths)
      for s in range(3):
        segments[r, edges[s]:edges[s + 1]] = s + 1
    labels = np.where(segments > 0, ids, IGNORE)
    labels[:, 1:][segments[:, 1:] != segments[:, :-1]] = IGNORE  # a sample's first token
    return {"input_ids": ids, "labels": labels, "attention_mask": (segments > 0).astype(np.int32),
            "segment_ids": segments}
  mask = np.ones_like(ids)
  mask[1, :5] = 0
  mask[3, :11] = 0
  labels = np.where(mask == 1, ids, IGNORE)
  labels[:, :7] = IGNORE
  return {"input_ids": ids, "labels": labels, "attention_mask": mask}


# The suite runs one padded and one packed case, one of each head; the other two with
# VISREGION_SLOW_TESTS=1 (each compiles a model's forward and backward twice, ~30 s).
SLOW = pytest.mark.skipif(not os.environ.get("VISREGION_SLOW_TESTS"),
                          reason="a further head / row combination; set VISREGION_SLOW_TESTS=1 to run it")


@pytest.mark.parametrize("tied, packed", [(True, True), (False, False), pytest.param(True, False, marks=SLOW),
                                          pytest.param(False, True, marks=SLOW)],
                         ids=["tied-packed", "untied-padded", "tied-padded", "untied-packed"])
def test_model_losses_and_gradients_equal_plain(tied, packed):
  """loss.token_losses / row_token_losses with model.loss_tiles = 4 (tiles of 5 of the 18
  positions) against 1 (the full logits); gradients of every parameter, the head included."""
  batch = jax.tree.map(jnp.asarray, text_batch(packed))

  def run(tiles):
    graphdef, params = nnx.split(decoder(tied, tiles))
    total = lambda p: loss.token_losses(nnx.merge(graphdef, p), batch)
    (value, count), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(params)
    rows = jax.jit(lambda p: loss.row_token_losses(nnx.merge(graphdef, p), batch))(params)
    return value, count, rows, grads

  plain, tiled = run(1), run(4)
  assert int(tiled[1]) == int(plain[1]) > 0
  np.testing.assert_allclose(tiled[0], plain[0], rtol=1e-6)
  np.testing.assert_allclose(tiled[2][0], plain[2][0], rtol=1e-6)
  np.testing.assert_array_equal(tiled[2][1], plain[2][1])
  head = ("embed_tokens", "embedding") if tied else ("lm_head", "kernel")
  flat = dict(nnx.to_flat_state(plain[3]))
  assert float(jnp.abs(flat[head].get_value()).max()) > 0
  for path, g in nnx.to_flat_state(tiled[3]):
    np.testing.assert_allclose(g.get_value(), flat[path].get_value(), atol=1e-5, rtol=0, err_msg=str(path))


def keep_gradients() -> optax.GradientTransformation:
  """Parameters left alone, the step's gradient kept as the optimizer state."""
  return optax.GradientTransformation(
      lambda params: jax.tree.map(jnp.zeros_like, params),
      lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


@pytest.mark.parametrize("tied", [True, pytest.param(False, marks=SLOW)], ids=["tied", "untied"])
def test_train_step_with_accumulation_equals_plain(tied):
  """The library's jitted step, region layer 1 trained (head frozen), 2 micro-batches:
  the token-weighted loss and the gradients of the tiled step equal the plain step's and
  those of one micro-batch."""
  batch = text_batch(packed=False)

  def step(tiles, accum):
    model = decoder(tied, tiles)
    plan = TrainingPlan(region_layers=(1,))
    graphdef, params, frozen, rest = plan.split(model)
    tx = keep_gradients()
    _, _, grads, metrics = jax.jit(make_train_step(graphdef, tx, accum, seed=0))(
        params, frozen, rest, tx.init(params), batch, 0)
    return float(metrics["loss"]), dict(nnx.to_flat_state(grads))

  plain_loss, plain_grads = step(1, 2)
  for tiles, accum in ((4, 2), (4, 1)):
    tiled_loss_value, grads = step(tiles, accum)
    np.testing.assert_allclose(tiled_loss_value, plain_loss, rtol=1e-6)
    for path, g in grads.items():
      np.testing.assert_allclose(g.get_value(), plain_grads[path].get_value(), atol=1e-5, rtol=0,
                                 err_msg=str(path))


# --- sharded --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mesh_results():
  return run_on_8_devices("run_tiled_loss_mesh.py")


def assert_same(got: dict, want: dict, atol: float) -> None:
  np.testing.assert_allclose(got["losses"], want["losses"], rtol=1e-6)
  assert got["grads"].keys() == want["grads"].keys()
  for path, value in want["grads"].items():
    np.testing.assert_allclose(np.asarray(got["grads"][path]), np.asarray(value), atol=atol, rtol=0, err_msg=path)


@pytest.mark.parametrize("case", ["decoder_tied_all_params", "lvlm_step_packed_accum2"])
@pytest.mark.parametrize("devices", ["1", "8"])
def test_tiled_equals_plain_on_a_mesh(mesh_results, case, devices):
  assert_same(mesh_results[devices][case]["tiled"], mesh_results[devices][case]["plain"], atol=1e-5)


@pytest.mark.parametrize("case", ["decoder_tied_all_params", "lvlm_step_packed_accum2"])
def test_tiled_on_8_devices_equals_one_device(mesh_results, case):
  """data x fsdp x tensor = 2 x 2 x 2: rows split over data and fsdp, the vocabulary of
  the head over tensor."""
  assert mesh_results["8"][case]["vocab_sharded"]
  assert_same(mesh_results["8"][case]["tiled"], mesh_results["1"][case]["tiled"], atol=1e-5)
