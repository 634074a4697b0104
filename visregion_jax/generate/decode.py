"""Batched decoding with a KV cache: greedy or temperature / top-p sampling.

The whole generation (prefill plus a `lax.while_loop` over new tokens) is one jitted
function of the split model state, so a call costs one compile per prompt shape and
stops as soon as every sample has produced an end-of-sequence token. Prompts are
left padded so all samples write the same cache slot at every step.
"""

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from visregion_jax import sharding
from visregion_jax.errors import VisRegionError
from visregion_jax.generate.prompts import encode_chat

# Prompts are left padded to a multiple of this many tokens: `_generate` compiles once per
# prompt shape, so ragged prompts would compile once per distinct length.
PROMPT_WIDTH_STEP = 64


def bucketed_width(length: int) -> int:
  """The padded width of a batch whose longest prompt is `length` tokens."""
  return -(-length // PROMPT_WIDTH_STEP) * PROMPT_WIDTH_STEP


def _sample(logits: jnp.ndarray, rng, temperature: float, top_p: float) -> jnp.ndarray:
  """Next token ids [B] from last-position logits [B, V]."""
  logits = logits.astype(jnp.float32)
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the more likely tokens
    cutoff_index = jnp.sum(before < top_p, axis=-1, keepdims=True) - 1
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_p"))
def _generate(graphdef, state, input_ids, attention_mask, extra_inputs, eos_ids, pad_id, seed, *,
              max_new_tokens: int, temperature: float, top_p: float):
  model = nnx.merge(graphdef, state)
  rng = jax.random.key(seed)
  batch, prompt_len = input_ids.shape
  cache = model.init_cache(batch, prompt_len + max_new_tokens)
  out = model.forward(input_ids, attention_mask=attention_mask, cache=cache, logits="last",
                      **extra_inputs)
  tokens = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)

  def cond(carry):
    step, _, _, _, done, _ = carry
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    step, tokens, logits, cache, done, rng = carry
    rng, key = jax.random.split(rng)
    token = _sample(logits[:, -1], key, temperature, top_p)
    token = jnp.where(done, pad_id, token)
    tokens = tokens.at[:, step].set(token)
    done = done | jnp.isin(token, eos_ids)
    step_out = model.forward(token[:, None], cache=cache, logits="last")
    return step + 1, tokens, step_out.logits, step_out.cache, done, rng

  carry = (jnp.zeros((), jnp.int32), tokens, out.logits, out.cache, jnp.zeros((batch,), bool), rng)
  return jax.lax.while_loop(cond, body, carry)[1]


def generate(model, input_ids, attention_mask=None, *, max_new_tokens: int = 32,
             eos_token_ids: Optional[Sequence[int]] = None, pad_token_id: Optional[int] = None,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, mesh=None,
             **extra_inputs) -> np.ndarray:
  """New tokens [B, max_new_tokens] for left-padded prompts [B, T].

  A sample's tokens after its end-of-sequence token are `pad_token_id`. `extra_inputs`
  (e.g. `pixel_values` for an LVLM) go to the prefill forward pass only.

  With `mesh`, the prompts (and their images) are this process's rows of one batch split
  over the mesh's batch axes, as training splits its batches: every process calls this
  with its own rows (the same shapes on each), the rows decode as one sharded batch,
  and each process gets its own rows' tokens back. The model's state must be on the
  mesh already (sharding.state_shardings).
  """
  if temperature < 0 or not 0 < top_p <= 1:
    raise VisRegionError("generate", f"expected temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
  input_ids = np.asarray(input_ids, np.int32)
  attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, np.int32)
  if np.any(attention_mask[:, -1] == 0):
    raise VisRegionError("attention_mask", "expected left padding (the last prompt position real)")
  model.validate(input_ids, **extra_inputs)
  config = model.config
  eos = tuple(config.eos_token_ids) if eos_token_ids is None else tuple(eos_token_ids)
  pad = next(p for p in (pad_token_id, config.pad_token_id, eos[0] if eos else 0) if p is not None)
  inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **extra_inputs}
  if mesh is not None:
    inputs = sharding.global_batch({k: np.asarray(v) for k, v in inputs.items()}, mesh)
  graphdef, state = nnx.split(model)
  ids, mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
  tokens = _generate(graphdef, state, ids, mask, inputs, np.asarray(eos or (-1,), np.int32), np.int32(pad),
                     np.uint32(seed), max_new_tokens=max_new_tokens, temperature=float(temperature),
                     top_p=float(top_p))
  return sharding.local_rows(tokens, mesh) if mesh is not None else np.asarray(tokens)


def chat(model, tokenizer, prompts: Sequence[str], images: Optional[Sequence[Sequence]] = None, *,
         image_processor=None, pad_to_square: bool = True, **kwargs) -> list:
  """Answers each prompt (about its images, for an LVLM) through the tokenizer's chat
  template; returns the decoded replies. See prompts.encode_chat for `images`."""
  vision = getattr(model.config, "vision", None) is not None
  inputs = encode_chat(tokenizer, prompts, images, image_processor=image_processor, pad_to_square=pad_to_square,
                       image_token_id=model.config.image_token_id if vision else -1,
                       num_image_tokens=model.config.num_image_tokens if vision else 0)
  tokens = generate(model, inputs.pop("input_ids"), inputs.pop("attention_mask"), **inputs, **kwargs)
  return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]
