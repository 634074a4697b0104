"""Region selection: the official list, the documented lists, and every strategy."""

import pytest

from visregion_jax.errors import VisRegionError
from visregion_jax.region import select_layers


def test_uniform_reproduces_the_official_32_layer_list():
  assert select_layers(32, 0.25, "uniform") == (1, 5, 9, 13, 19, 23, 27, 31)


def test_documented_lists():
  assert select_layers(30) == (1, 4, 8, 12, 18, 22, 26, 29)
  assert select_layers(40) == (1, 5, 9, 13, 17, 23, 27, 31, 35, 39)


@pytest.mark.parametrize("num_layers", [1, 2, 3, 5, 8, 13, 24, 30, 32, 40, 64, 80])
@pytest.mark.parametrize("fraction", [0.05, 0.25, 0.5, 0.75, 1.0])
def test_uniform_is_spread_over_both_halves(num_layers, fraction):
  chosen = select_layers(num_layers, fraction)
  expected = max(1, min(num_layers, int(num_layers * fraction + 0.5)))
  assert len(chosen) == len(set(chosen)) == expected
  assert all(0 <= i < num_layers for i in chosen) and list(chosen) == sorted(chosen)
  if expected >= 2 and num_layers >= 4:
    assert min(chosen) < num_layers // 2 <= max(chosen)
  gaps = [b - a for a, b in zip(chosen, chosen[1:])]
  if len(chosen) >= 4 and expected < num_layers:  # no clumping: gaps within a factor of ~2
    assert max(gaps) <= 2 * min(gaps) + 2


def test_other_strategies():
  assert select_layers(8, 0.25, "first") == (0, 1)
  assert select_layers(8, 0.25, "last") == (6, 7)
  assert select_layers(4, 0.25, "full") == (0, 1, 2, 3)
  assert select_layers(4, 0.25, "none") == ()
  assert select_layers(6, strategy="explicit", layers=[5, 1, 1]) == (1, 5)


@pytest.mark.parametrize("kwargs, key", [
    (dict(fraction=0.0), "region.fraction"),
    (dict(fraction=1.5), "region.fraction"),
    (dict(strategy="random"), "region.strategy"),
    (dict(strategy="explicit", layers=[3, 8]), "region.layers"),
    (dict(strategy="explicit", layers=[]), "region.layers"),
])
def test_bad_region_config(kwargs, key):
  with pytest.raises(VisRegionError, match=key):
    select_layers(8, **kwargs)
