"""The visual region: which decoder layers visual instruction tuning updates.

`uniform` is the paper's sparse, even spread. The rule, which reproduces the official
32-layer list `1,5,9,13,19,23,27,31`: take k = round_half_up(L * fraction) layers,
ceil(k/2) from the lower half and floor(k/2) from the upper half (h = L // 2 layers
below, L - h above); the lower half is walked forward from layer 1 with step h / k1,
the upper half backward from the last layer with step (L - h) / k2, flooring each
position. Lists it gives for fraction 0.25:
  30 layers (SmolLM2-135M): 1, 4, 8, 12, 18, 22, 26, 29
  32 layers (Vicuna-7B, Llama-3-8B, Phi-3-mini): 1, 5, 9, 13, 19, 23, 27, 31 (official)
  40 layers (Vicuna-13B): 1, 5, 9, 13, 17, 23, 27, 31, 35, 39 (a reconstruction: the
    paper's 40-layer list is not published)

`scored` picks the same number of layers from a probe of the model on training data
(train/region_probe.py measures each layer's block influence on image tokens;
`scored_layers` here picks the highest), by default half from each half of the
decoder as the paper's spread does (`region.scored_halves`).
"""

import math

from visregion_jax.errors import VisRegionError

STRATEGIES = ("uniform", "explicit", "first", "last", "full", "none", "scored")


def region_size(num_layers: int, fraction: float) -> int:
  if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
    raise VisRegionError("region.fraction", f"expected a number in (0, 1], got {fraction!r}")
  return max(1, min(num_layers, math.floor(num_layers * fraction + 0.5)))


def _spread(size: int, count: int) -> list:
  """`count` offsets in [0, size), evenly spaced, starting at 1 unless all are taken."""
  if count == 0:
    return []
  start = 0 if count >= size else 1
  return [start + math.floor(j * size / count) for j in range(count)]


def _half_counts(num_layers: int, k: int) -> tuple:
  """(layers from the lower half, from the upper half): ceil(k/2) below unless the lower
  half (num_layers // 2 layers) is smaller than that."""
  lower = num_layers // 2
  k_lower = min((k + 1) // 2, lower)
  return k_lower, k - k_lower


def scored_layers(scores, fraction: float, halves: bool = True) -> tuple:
  """The region of `scored`: the region_size(len(scores), fraction) layers with the
  highest scores (ties: the lower index), with `halves` as many from each half of the
  decoder as `uniform` takes."""
  num_layers = len(scores)
  k = region_size(num_layers, fraction)
  by_score = lambda layers: sorted(layers, key=lambda i: (-scores[i], i))
  if not halves:
    return tuple(sorted(by_score(range(num_layers))[:k]))
  k_lower, k_upper = _half_counts(num_layers, k)
  lower = num_layers // 2
  return tuple(sorted(by_score(range(lower))[:k_lower] + by_score(range(lower, num_layers))[:k_upper]))


def select_layers(num_layers: int, fraction: float = 0.25, strategy: str = "uniform",
                  layers=None) -> tuple:
  """Sorted indices of the region's decoder layers (`scored` excepted: scored_layers)."""
  if not isinstance(num_layers, int) or num_layers < 1:
    raise VisRegionError("num_layers", f"expected a positive integer, got {num_layers!r}")
  if strategy not in STRATEGIES:
    raise VisRegionError("region.strategy", f"expected one of {list(STRATEGIES)}, got {strategy!r}")
  if strategy == "none":
    return ()
  if strategy == "scored":
    raise VisRegionError("region.strategy", "expected the probe's layer scores for scored (the training "
                         "builder measures them; a scored run's region is in WORKDIR/region.json)")
  if strategy == "full":
    return tuple(range(num_layers))
  if strategy == "explicit":
    chosen = list(layers or ())
    bad = [i for i in chosen if not isinstance(i, int) or not 0 <= i < num_layers]
    if not chosen or bad:
      raise VisRegionError("region.layers", f"expected layer indices in [0, {num_layers}), got "
                           f"{bad or chosen!r}")
    return tuple(sorted(set(chosen)))
  k = region_size(num_layers, fraction)
  if strategy == "first":
    return tuple(range(k))
  if strategy == "last":
    return tuple(range(num_layers - k, num_layers))
  lower = num_layers // 2
  upper = num_layers - lower
  k_lower, k_upper = _half_counts(num_layers, k)  # tiny models: fewer lower-half layers than the lower share
  below = _spread(lower, k_lower)
  above = [num_layers - 1 - math.floor(j * upper / k_upper) for j in range(k_upper)]
  return tuple(sorted(below + above))
