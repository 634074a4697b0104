"""Which layers go, and the shallower model without them.

Dropping rebuilds a shallower model from the kept layers' arrays (no copy, nothing of
the dropped layers kept); since layers hold no index and the KV cache is a list
parallel to the layers, the shallower model's cache slots are right by construction
(the reference code keeps stale attention layer indices).
"""

import numpy as np
from flax import nnx

from visregion_jax.convert.params import merge_params, model_params
from visregion_jax.errors import VisRegionError
from visregion_jax.models.llama import abstract_decoder
from visregion_jax.models.lvlm import LVLM, abstract_lvlm


def layers_to_remove(scores, k: int, region=(), *, contiguous: bool = False,
                     allow_region: bool = False) -> tuple:
  """The k layers to drop: the k lowest-scoring ones outside the visual region (the
  paper), or with `contiguous` the block of k consecutive layers whose block score
  (scores computed with block_size=k) is lowest. A region layer is removed only when
  `allow_region` is set (the baselines that ignore the region).
  """
  scores = np.asarray(scores, np.float64)
  region = set() if allow_region else set(region)
  if contiguous:
    starts = range(len(scores) - k + 1)  # block scores: blocks that fit in the model
    for start in sorted(starts, key=lambda i: (scores[i], i)):
      block = tuple(range(start, start + k))
      if not region.intersection(block):
        return block
    raise VisRegionError("prune.k", f"no block of {k} consecutive layers avoids the region {sorted(region)}")
  candidates = [i for i in range(len(scores)) if i not in region]
  if not 0 < k < len(candidates):
    raise VisRegionError("prune.k", f"expected 0 < k < {len(candidates)} (the layers that may be "
                         f"pruned), got {k}")
  return tuple(sorted(sorted(candidates, key=lambda i: (scores[i], i))[:k]))


def remap_layers(layers, removed) -> tuple:
  """Indices of kept `layers` in the shallower model."""
  removed = set(removed)
  return tuple(i - sum(r < i for r in removed) for i in layers if i not in removed)


def drop_layers(model, layers) -> nnx.Module:
  """A new, shallower model without `layers` (LoRA merged into the kept layers)."""
  num_layers = len(model.layers)
  removed = sorted(set(layers))
  if any(not isinstance(i, (int, np.integer)) or not 0 <= i < num_layers for i in removed):
    raise VisRegionError("prune.layers", f"expected layer indices in [0, {num_layers}), got {list(layers)}")
  if len(removed) >= num_layers:
    raise VisRegionError("prune.layers", "expected at least one layer to remain")
  kept = [i for i in range(num_layers) if i not in removed]
  new_index = {old: new for new, old in enumerate(kept)}
  prefix = ("language_model",) if isinstance(model, LVLM) else ()
  values = {}
  for path, value in model_params(model).items():
    head, rel = path[:len(prefix)], path[len(prefix):]
    if head == prefix and rel[:1] == ("layers",):
      if rel[1] in new_index:
        values[prefix + ("layers", new_index[rel[1]]) + rel[2:]] = value
    else:
      values[path] = value
  if isinstance(model, LVLM):
    text = model.config.text.replace(num_layers=len(kept))
    return merge_params(abstract_lvlm(model.config.replace(text=text)), values)
  return merge_params(abstract_decoder(model.config.replace(num_layers=len(kept))), values)
