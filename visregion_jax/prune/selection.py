"""Which layers pruning removes, and the scores it chose them by.

Three ways, each recorded in the report: the layers `prune.layers` names (scored all
the same, for scores.json and the chart); one-shot, the `prune.k` lowest scores (or
the lowest block, with `prune.contiguous`) outside the region; iterative
(`prune.iterative`), one layer per round, the shallower model scored afresh each
round, since removing a layer changes what the layers after it see (ShortGPT scores
once; Gromov et al. and LLM-Streamline note the scores drift as layers go). With k = 1
the two agree by construction: round one is the one-shot choice.
"""

import math

from visregion_jax import prune
from visregion_jax.convert.tensor_files import read_json_object
from visregion_jax.errors import VisRegionError


def choose_layers(scores: list, k: int, region_layers, *, contiguous: bool = False,
                  allow_region: bool = False) -> tuple:
  """prune.layers_to_remove over the layers that have a score (nulls trail)."""
  scored = [s for s in scores if s is not None]
  if contiguous:  # starts of blocks that fit are exactly the scored entries
    padded = scored + [math.inf] * (len(scores) - len(scored))
    return prune.layers_to_remove(padded, k, region_layers, contiguous=True, allow_region=allow_region)
  inside = [i for i in region_layers if i < len(scored)]
  return prune.layers_to_remove(scored, k, inside, allow_region=allow_region)


def read_scores(path: str, num_layers: int, block: int, metric: str) -> list:
  """layer_scores of a scores.json, checked against this model's depth, block size and metric."""
  saved = read_json_object(path)
  scores = saved.get("layer_scores")
  if not isinstance(scores, list):
    raise VisRegionError(f"{path}: layer_scores", "expected a list")
  if len(scores) != num_layers:
    raise VisRegionError(path, f"expected {num_layers} layer scores for this model, got {len(scores)}")
  if saved.get("metric") != metric:
    raise VisRegionError(f"{path}: metric", f"expected prune.metric={metric!r}, got {saved.get('metric')!r}")
  numbers = len(scores) - block + 1
  if (any(isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) for s in scores[:numbers])
      or any(s is not None for s in scores[numbers:])):
    raise VisRegionError(f"{path}: layer_scores", f"expected scores of blocks of {block} layers "
                         f"({numbers} finite numbers, then {block - 1} nulls)")
  return [float(s) if s is not None else None for s in scores]


def score(model, batches, p, block: int) -> list:
  """One entry per layer of `model`: its block's score, null where no block fits."""
  values = prune.layer_scores(model, batches, metric=p.metric, block_size=block, tokens=p.tokens)
  return [float(s) for s in values] + [None] * (block - 1)


def select(model, batches, p, region_layers, block: int, scores=None) -> tuple:
  """(scores of `model`, removed layers in its indices, rounds): the choice the config
  makes. `batches()` yields calibration batches afresh; `scores` (a reused scores.json)
  stands for the first scoring. rounds: iterative only, one {"layer_scores" (of that
  round's model), "removed" (in its indices), "removed_original"} per round."""
  scores = score(model, batches(), p, block) if scores is None else scores
  if p.layers:
    return scores, tuple(sorted(p.layers)), []
  if not p.iterative:
    return scores, choose_layers(scores, p.k, region_layers, contiguous=p.contiguous,
                                 allow_region=p.allow_region), []
  original = list(range(len(model.layers)))  # original index of each current layer
  current, region, round_scores, rounds = model, tuple(region_layers), scores, []
  for _ in range(p.k):
    if rounds:
      round_scores = score(current, batches(), p, block)
    (pick,) = choose_layers(round_scores, 1, region, allow_region=p.allow_region)
    rounds.append({"layer_scores": round_scores, "removed": pick, "removed_original": original[pick]})
    current, region = prune.drop_layers(current, [pick]), prune.remap_layers(region, [pick])
    del original[pick]
  return scores, tuple(sorted(r["removed_original"] for r in rounds)), rounds
