"""The jitted training step over split NNX state.

The model is split into trainable parameters (differentiated), frozen parameters
(closed over: JAX computes no weight gradient for them, only the activation
gradients the trainable ones below need) and the rest (dropout RNG streams,
reseeded from the step so resume needs no RNG state). Gradients of micro-batches
are summed with the count of supervised tokens, so the loss is the mean over every
supervised token of the global batch whatever the accumulation or mesh.
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from visregion_jax.loss import token_losses


def reseeded(rest, key):
  """The non-parameter state with every RNG stream keyed from `key` (one key per stream)
  and its counter reset, built functionally so it works inside jit and scan."""
  flat = list(nnx.to_flat_state(rest))
  streams = [i for i, (_, v) in enumerate(flat) if isinstance(v, nnx.RngKey)]
  new = []
  for i, (path, variable) in enumerate(flat):
    if isinstance(variable, nnx.RngKey):
      variable = variable.replace(jax.random.fold_in(key, streams.index(i)))
    elif isinstance(variable, nnx.RngCount):
      variable = variable.replace(jnp.zeros_like(variable.get_value()))
    new.append((path, variable))
  return nnx.from_flat_state(new)


def split_micro_batches(batch: dict, accum_steps: int) -> dict:
  def split(x):
    return x.reshape(accum_steps, x.shape[0] // accum_steps, *x.shape[1:])
  return jax.tree.map(split, batch)


def make_train_step(graphdef, tx: optax.GradientTransformation, accum_steps: int, seed: int):
  """step(trainable, frozen, rest, opt_state, batch, step) -> (trainable, rest, opt_state, metrics).

  A non-finite loss or gradient leaves parameters and optimizer state unchanged
  (`metrics["finite"]` is False); the caller counts and stops after too many.
  """

  def loss_fn(trainable, frozen, rest, micro, key):
    model = nnx.merge(graphdef, trainable, frozen, reseeded(rest, key))
    return token_losses(model, micro)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(trainable, frozen, rest, opt_state, batch, step_index):
    key = jax.random.fold_in(jax.random.key(seed), step_index)
    micro_batches = split_micro_batches(batch, accum_steps)

    def accumulate(carry, xs):
      grads, total, count = carry
      micro, i = xs
      (loss_sum, n), g = grad_fn(trainable, frozen, rest, micro, jax.random.fold_in(key, i))
      return (jax.tree.map(jnp.add, grads, g), total + loss_sum, count + n), None

    zeros = jax.tree.map(jnp.zeros_like, trainable)
    init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    (grads, total, count), _ = jax.lax.scan(accumulate, init,
                                            (micro_batches, jnp.arange(accum_steps)))
    denom = jnp.maximum(count, 1).astype(jnp.float32)
    grads = jax.tree.map(lambda g: g / denom, grads)
    loss = total / denom
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def apply(trainable, opt_state):
      updates, new_opt_state = tx.update(grads, opt_state, trainable)
      return optax.apply_updates(trainable, updates), new_opt_state

    # A branch rather than a select: a skipped step computes no update, and the update
    # can be written in place of the donated buffers (a select keeps old and new alive).
    trainable, opt_state = jax.lax.cond(finite, apply, lambda *state: state, trainable, opt_state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "supervised_tokens": count, "finite": finite}
    return trainable, rest, opt_state, metrics

  return step


def make_eval_loss(graphdef):
  """(loss sum, count) of a batch with the model in eval mode (no dropout)."""

  def eval_loss(trainable, frozen, rest, batch):
    model = nnx.merge(graphdef, trainable, frozen, rest)
    model.eval()
    return token_losses(model, batch)

  return eval_loss
