"""The model FLOPs of one training step: the numerator of MFU.

Counted as PaLM and MaxText count model FLOPs: the matrix products the step needs for
its real tokens and real images, 2 FLOPs per multiply-add. Not counted: elementwise
work (norms, activations, softmax, RoPE, biases, the loss, the optimizer update),
remat's recomputation (hardware FLOPs, not model FLOPs), and what the dense batch
computes for padding (padding tokens, padding image slots, the masked half of the
T x T attention scores). So padding and recomputation show up as a lower MFU, which
is the point: `padding_fraction` in the logs says how much of it is padding.

Per matrix product x[., K] @ W[K, N] and row of x:
- forward 2KN;
- input gradient 2KN when x depends on a trainable parameter (JAX computes no
  cotangent for a value that depends on none: below the lowest trainable parameter
  nothing runs backward);
- weight gradient 2KN when the plan trains W.
A LoRA linear adds its factors' products: forward (x A) B, 2Kr + 2rN; backward
dB = (xA)^T dy (2rN), d(xA) = dy B^T (2rN, needed for dA or dx), dA = x^T d(xA)
(2Kr), and dx += d(xA) A^T (2Kr) when x needs a gradient.
Attention: per causal (query, key) pair of a segment, QK^T and the weighted sum of V
take 4 * query heads * head_dim FLOPs forward (grouped K/V heads save no product), twice that backward (dQ, dK, dP, dV) in a
layer whose queries, keys and values carry a gradient. A segment of L real tokens has
L (L + 1) / 2 pairs (each token attends to itself and every earlier one; with a
sliding window w, min(i + 1, w) keys for token i); MaxText writes L^2 / 2, which
differs by L / 2 (and counts the padded length, not the real segments). The vision
tower attends unmasked: P^2 pairs per image.

The projector trains (unless `region.train_projector` is off, as in pruning's healing),
so in an LVLM every decoder layer runs backward (the image features at its input carry
a gradient) and only a frozen vision tower runs forward alone; in a text-only decoder,
or with the projector frozen, the layers below the region run forward only.

Which parameters are trainable is the plan's word (`plan.is_trainable`) on the
model's own parameter paths; which vision layers run follows VisionTower.features
(only up to the deepest feature layer).
"""

import dataclasses
from typing import Optional

import numpy as np
from flax import nnx

from visregion_jax.errors import VisRegionError
from visregion_jax.models.lvlm import LVLM
from visregion_jax.models.projector import projector_depth

# A transformer block's parts, by the names each family uses.
DECODER_BLOCK = {"norm1": "input_layernorm", "attention": "self_attn", "qkv": ("q_proj", "k_proj", "v_proj"),
                 "out": "o_proj", "norm2": "post_attention_layernorm", "mlp": "mlp",
                 "mlp_in": ("gate_proj", "up_proj"), "mlp_out": "down_proj"}
VISION_BLOCK = {"norm1": "layer_norm1", "attention": "self_attn", "qkv": ("q_proj", "k_proj", "v_proj"),
                "out": "out_proj", "norm2": "layer_norm2", "mlp": "mlp", "mlp_in": ("fc1",), "mlp_out": "fc2"}


def _matmul(k: int, n: int, x_grad: bool, w_grad: bool) -> int:
  return 2 * k * n * (1 + x_grad + w_grad)


class _Params:
  """A model's parameter shapes and the set the plan trains, by path (parts as strings)."""

  def __init__(self, model, plan):
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    self.shapes = {tuple(map(str, p)): tuple(v.get_value().shape) for p, v in flat}
    self.trainable = {tuple(map(str, p)) for p, v in flat if plan.is_trainable(p, v)}

  def trains(self, *prefix: str) -> bool:
    """Whether the plan trains any parameter under `prefix`."""
    return any(p[:len(prefix)] == prefix for p in self.trainable)

  def linear(self, prefix: tuple, x_grad: bool) -> int:
    """FLOPs per input row of the linear at `prefix` (with its LoRA factors, if any)."""
    k, n = self.shapes[prefix + ("kernel",)]
    flops = _matmul(k, n, x_grad, prefix + ("kernel",) in self.trainable)
    if prefix + ("lora_a",) in self.shapes:
      r = self.shapes[prefix + ("lora_a",)][1]
      a, b = (prefix + (name,) in self.trainable for name in ("lora_a", "lora_b"))
      flops += 2 * k * r + 2 * r * n + 2 * r * n * (b + (a or x_grad)) + 2 * k * r * (a + x_grad)
    return flops

  def block(self, prefix: tuple, names: dict, x_grad: bool) -> tuple:
    """(FLOPs per token, FLOPs per attention pair, whether the output carries a gradient)
    of one pre-norm transformer block whose input carries a gradient iff `x_grad`."""
    attention, mlp = prefix + (names["attention"],), prefix + (names["mlp"],)
    normed = x_grad or self.trains(*prefix, names["norm1"])
    per_token = sum(self.linear(attention + (p,), normed) for p in names["qkv"])
    qkv = normed or any(self.trains(*attention, p) for p in names["qkv"])
    width = self.shapes[attention + (names["qkv"][0], "kernel")][1]  # heads x head_dim
    per_pair = 4 * width * (1 + 2 * qkv)
    per_token += self.linear(attention + (names["out"],), qkv)
    x = x_grad or qkv or self.trains(*attention, names["out"])
    normed = x or self.trains(*prefix, names["norm2"])
    per_token += sum(self.linear(mlp + (p,), normed) for p in names["mlp_in"])
    hidden = normed or any(self.trains(*mlp, p) for p in names["mlp_in"])
    per_token += self.linear(mlp + (names["mlp_out"],), hidden)
    return per_token, per_pair, x or hidden or self.trains(*mlp, names["mlp_out"])


def _image_flops(params: _Params, config) -> tuple:
  """(FLOPs per image through the tower's needed layers and the projector, whether the
  projected features carry a gradient)."""
  v = config.vision
  conv = ("vision_tower", "patch_embedding", "kernel")
  kh, kw, channels, width = params.shapes[conv]
  flops = v.num_patches * _matmul(kh * kw * channels, width, False, conv in params.trainable)
  x_grad = any(params.trains("vision_tower", name)
               for name in ("patch_embedding", "class_embedding", "position_embedding", "pre_layrnorm"))
  states = v.num_layers + 1  # hidden states: the embeddings, then each layer's output
  for j in range(max(int(i) % states for i in config.feature_layers)):
    per_token, per_pair, x_grad = params.block(("vision_tower", "layers", str(j)), VISION_BLOCK, x_grad)
    flops += v.num_positions * per_token + v.num_positions ** 2 * per_pair
  for j in range(projector_depth(config.projector_type)):
    prefix = ("projector", "linears", str(j))
    flops += config.num_image_tokens * params.linear(prefix, x_grad)
    x_grad = x_grad or params.trains(*prefix)
  return flops, x_grad


@dataclasses.dataclass(frozen=True)
class StepFlops:
  """A model's training-step FLOPs under one plan as coefficients; called on a host
  batch it returns that step's model FLOPs (a few numpy reductions)."""
  per_token: int   # every real token through the decoder and the LM head
  per_pair: int    # every causal (query, key) pair of a segment, summed over the layers
  per_image: int   # every real image through the vision tower and the projector
  sliding_window: Optional[int] = None

  def __call__(self, batch: dict) -> float:
    lengths = segment_lengths(batch)
    pairs = causal_pairs(lengths, self.sliding_window)
    # in floats: a large model's step can pass int64's range
    return (float(self.per_token) * float(lengths.sum()) + float(self.per_pair) * float(pairs.sum())
            + float(self.per_image) * real_images(batch))


def step_flops(model, plan) -> StepFlops:
  """The FLOP coefficients of a training step of `model` (a Decoder or an LVLM, with
  its LoRA factors attached) under `plan`."""
  params = _Params(model, plan)
  lvlm = isinstance(model, LVLM)
  base = ("language_model",) if lvlm else ()
  text = model.config.text if lvlm else model.config
  per_image, x_grad = _image_flops(params, model.config) if lvlm else (0, False)
  x_grad = x_grad or params.trains(*base, "embed_tokens")
  per_token = per_pair = 0
  for i in range(len(model.layers)):
    token, pair, x_grad = params.block(base + ("layers", str(i)), DECODER_BLOCK, x_grad)
    per_token, per_pair = per_token + token, per_pair + pair
  x_grad = x_grad or params.trains(*base, "norm")
  if text.tie_word_embeddings:
    vocab, hidden = params.shapes[base + ("embed_tokens", "embedding")]
    per_token += _matmul(hidden, vocab, x_grad, params.trains(*base, "embed_tokens"))
  else:
    per_token += params.linear(base + ("lm_head",), x_grad)
  return StepFlops(per_token=per_token, per_pair=per_pair, per_image=per_image,
                   sliding_window=text.sliding_window)


def segment_lengths(batch: dict) -> np.ndarray:
  """Real tokens of every segment of a host batch: the packed samples of `segment_ids`
  (1..n per row, 0 = padding) when the batch has them, else each row's attention_mask."""
  if batch.get("segment_ids") is None:
    return np.asarray(batch["attention_mask"]).astype(np.int64).sum(axis=1)
  ids = np.asarray(batch["segment_ids"]).astype(np.int64)
  if ids.ndim != 2 or (ids.size and ids.min() < 0):
    raise VisRegionError("segment_ids", f"expected non-negative ids [B, T], got shape {list(ids.shape)}"
                         + (f" with minimum {ids.min()}" if ids.size else ""))
  slots = int(ids.max(initial=0)) + 1
  rows = np.arange(ids.shape[0])[:, None] * slots
  counts = np.bincount((ids + rows).ravel(), minlength=ids.shape[0] * slots).reshape(-1, slots)[:, 1:]
  return counts[counts > 0]


def causal_pairs(lengths: np.ndarray, sliding_window: Optional[int] = None) -> np.ndarray:
  """(query, key) pairs causal attention computes in segments of these lengths."""
  lengths = np.asarray(lengths, np.int64)
  if sliding_window is None:
    return lengths * (lengths + 1) // 2
  w = np.minimum(lengths, sliding_window)
  return w * (w + 1) // 2 + (lengths - w) * sliding_window


def real_images(batch: dict) -> int:
  """Images of a host batch that land on tokens (`image_mask` marks padding slots)."""
  if batch.get("pixel_values") is None:
    return 0
  if batch.get("image_mask") is not None:
    return int(np.sum(batch["image_mask"]))
  return int(np.shape(batch["pixel_values"])[0])
