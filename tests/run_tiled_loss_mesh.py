"""The tiled loss against the plain one on a one-device mesh and on a 2x2x2 data x fsdp x
tensor mesh, for tests/test_tiled_loss.py.

Runs in a fresh process started with 8 simulated CPU devices (the device count is fixed
when jax starts). Parameters are placed as the training loop places them (the head's
vocabulary over `tensor`, its embed dimension over `fsdp`) and everything runs jitted
inside `jax.set_mesh`, as the loop calls its step. Two cases, each with model.loss_tiles
1 (plain) and N (tiled, tiles that do not divide the row):
- decoder_tied_all_params: a tied decoder, loss and gradients of every parameter (the
  embedding gets its gradient from the lookup and from the tiled head);
- lvlm_step_packed_accum2: the library's train step of an LVLM (untied head, frozen;
  region layer 1 and the projector trained) on packed rows with images, two micro-batches.
Prints one line `RESULT {json}`: per mesh, case and path the losses and gradients.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import run_attention_steps as packed
from flax import nnx

from visregion_jax import loss, sharding
from visregion_jax.data.tokenize import IGNORE_INDEX
from visregion_jax.models.llama import Decoder
from visregion_jax.models.lvlm import LVLM
from visregion_jax.train.step import make_train_step


def placed(state, mesh):
  return jax.device_put(state, sharding.state_shardings(state, mesh))


def flat(state) -> dict:
  return {"/".join(map(str, path)): np.asarray(v.get_value()).tolist() for path, v in nnx.to_flat_state(state)}


def vocab_split(state, path: tuple) -> bool:
  return "tensor" in dict(nnx.to_flat_state(state))[path].get_value().sharding.spec


def text_batch() -> dict:
  """8 rows of 40 tokens: left padding, an unsupervised prompt."""
  rng = np.random.RandomState(0)
  ids = rng.randint(0, packed.VOCAB, size=(8, 40)).astype(np.int32)
  mask = np.ones_like(ids)
  for r in range(8):
    mask[r, :3 * r] = 0
  labels = np.where(mask == 1, ids, IGNORE_INDEX)
  labels[:, :25] = IGNORE_INDEX
  return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def decoder_case(mesh, tiles: int) -> dict:
  config = packed.TEXT.replace(tie_word_embeddings=True, loss_tiles=tiles)
  graphdef, params = nnx.split(Decoder(config, rngs=nnx.Rngs(0)))
  params = placed(params, mesh)
  total = jax.jit(jax.value_and_grad(lambda p, b: loss.token_losses(nnx.merge(graphdef, p), b)[0]))
  with jax.set_mesh(mesh):
    value, grads = total(params, sharding.global_batch(text_batch(), mesh))
  return {"losses": [float(value)], "grads": flat(grads),
          "vocab_sharded": vocab_split(params, ("embed_tokens", "embedding"))}


def keep_gradients() -> optax.GradientTransformation:
  return optax.GradientTransformation(
      lambda params: jax.tree.map(jnp.zeros_like, params),
      lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def lvlm_case(mesh, tiles: int) -> dict:
  model = LVLM(packed.CONFIG, rngs=nnx.Rngs(0))
  model.language_model.config = model.language_model.config.replace(loss_tiles=tiles)
  packed.PLAN.prepare(model, seed=0)
  graphdef, params, frozen, rest = packed.PLAN.split(model)
  params, frozen = placed(params, mesh), placed(frozen, mesh)
  rest = jax.device_put(rest, sharding.replicated(mesh))
  tx = keep_gradients()
  step = jax.jit(make_train_step(graphdef, tx, accum_steps=2, seed=0))
  rows = [packed.batch(0), packed.batch(1)]  # 8 packed rows: 4 per micro-batch
  batch = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
  with jax.set_mesh(mesh):
    _, _, grads, metrics = step(params, frozen, rest, tx.init(params), sharding.global_batch(batch, mesh), 0)
  return {"losses": [float(metrics["loss"])], "grads": flat(grads),
          "vocab_sharded": vocab_split(frozen, ("language_model", "lm_head", "kernel"))}


def main() -> None:
  meshes = {"1": sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]), "8": sharding.make_mesh(2, 2, 2)}
  cases = {"decoder_tied_all_params": (decoder_case, 3), "lvlm_step_packed_accum2": (lvlm_case, 5)}
  result = {}
  for name, mesh in meshes.items():
    for case, (run, tiles) in cases.items():
      tiled = run(mesh, tiles)
      result.setdefault(name, {})[case] = {"tiled": tiled, "plain": run(mesh, 1),
                                           "vocab_sharded": tiled["vocab_sharded"]}
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
