"""Visual-region-based pruning: score decoder layers, drop the least important ones
outside the region. `python -m visregion_jax.prune` is the command (prune/job.py runs
it: checks, scores, selection, healing, report, export)."""

from visregion_jax.layer_influence import METRICS, TOKEN_SUBSETS, layer_scores
from visregion_jax.prune.layers import drop_layers, layers_to_remove, remap_layers

__all__ = ["METRICS", "TOKEN_SUBSETS", "drop_layers", "layer_scores", "layers_to_remove", "remap_layers"]
