"""The pruning job of `python -m visregion_jax.prune --config configs/NAME.py`.

Prunes the model of a region training run (`WORKDIR/hf`, or `prune.model`): scores
its decoder layers on calibration samples, removes the `prune.k` least important
layers outside the visual region, exports the shallower model and measures both.
Everything lands in WORKDIR/prune/:

  scores.json  {"layer_scores", "region", "removed", "metric"}, layer indices of the
               model before pruning. layer_scores has one entry per decoder layer:
               entry i scores the block of b layers starting at layer i, where b is
               prune.block_size, or prune.k with prune.contiguous (whose selection
               compares blocks of k layers); the last b - 1 entries are null (no full
               block starts there) and those layers are never removed. With b = 1 it
               is simply one score per layer. `prune.scores_json` reuses such a file.
  scores.png   the scores as bars, region and removed layers in their own colours
  hf/          the pruned model (transformers loads it with L - k layers)
  report.md, report.json  held-out answer accuracy, text perplexity, forward latency
               and parameter count, before and after pruning

Calibration uses the first `prune.calibration_samples` usable samples of
`prune.calibration_json` (default: the training data) in the order of
numpy.random.default_rng(seed).permutation, through the training pipeline's loader
and collate, streamed a batch at a time. The region is the training run's
WORKDIR/region.json, else the config's region settings.
"""

import json
import math
import os

import numpy as np

from visregion_jax import plots, prune, region
from visregion_jax.console import log_line
from visregion_jax.convert import load_tokenizer, to_hf
from visregion_jax.convert.tensor_files import read_json_object
from visregion_jax.data import pipeline, sources
from visregion_jax.data.from_config import data_config_for, open_source
from visregion_jax.errors import VisRegionError
from visregion_jax.loading import load_model
from visregion_jax.prune.report import METRICS, measure, write_report
from visregion_jax.publish import write_file_atomically


def model_dir_of(config, workdir: str) -> str:
  if config.prune.model:
    return config.prune.model
  path = os.path.join(workdir, "hf")
  if not os.path.isdir(path):
    raise VisRegionError(path, "expected the training run's HF export (train.export_hf), or set prune.model")
  return path


def region_of(config, workdir: str, num_layers: int) -> tuple:
  path = os.path.join(workdir, "region.json")
  if not os.path.isfile(path):
    r = config.region
    return region.select_layers(num_layers, r.fraction, r.strategy, list(r.get("layers") or ()))
  saved = read_json_object(path)
  if saved.get("num_layers") != num_layers:
    raise VisRegionError(path, f"expected the region of a {num_layers}-layer model (the model to prune), "
                         f"got one of {saved.get('num_layers')} layers")
  layers = saved.get("region_layers")
  if not isinstance(layers, list) or any(not isinstance(i, int) or not 0 <= i < num_layers for i in layers):
    raise VisRegionError(f"{path}: region_layers", f"expected a list of layer indices in [0, {num_layers})")
  return tuple(layers)


def block_size_of(p, num_layers: int) -> int:
  """Layers per scored block: prune.k for contiguous selection, else prune.block_size."""
  if not p.contiguous:
    if not 1 <= p.block_size <= num_layers:
      raise VisRegionError("prune.block_size", f"expected 1..{num_layers}, got {p.block_size}")
    return p.block_size
  if not 0 < p.k < num_layers:
    raise VisRegionError("prune.k", f"expected 0 < k < {num_layers} (the model's layers), got {p.k}")
  if p.block_size not in (1, p.k):
    raise VisRegionError("prune.block_size", f"expected 1 or prune.k={p.k} with prune.contiguous "
                         f"(blocks of k layers are scored), got {p.block_size}")
  return p.k


def choose_layers(scores: list, p, region_layers) -> tuple:
  """prune.layers_to_remove over the layers that have a score (nulls trail)."""
  scored = [s for s in scores if s is not None]
  if p.contiguous:  # starts of blocks that fit are exactly the scored entries
    padded = scored + [math.inf] * (len(scores) - len(scored))
    return prune.layers_to_remove(padded, p.k, region_layers, contiguous=True, allow_region=p.allow_region)
  inside = [i for i in region_layers if i < len(scored)]
  return prune.layers_to_remove(scored, p.k, inside, allow_region=p.allow_region)


def read_scores(path: str, model, block: int, metric: str) -> list:
  """layer_scores of a scores.json, checked against this model, block size and metric."""
  saved = read_json_object(path)
  scores = saved.get("layer_scores")
  if not isinstance(scores, list):
    raise VisRegionError(f"{path}: layer_scores", "expected a list")
  prune.check_scores_match(scores, model, path)
  if saved.get("metric") != metric:
    raise VisRegionError(f"{path}: metric", f"expected prune.metric={metric!r}, got {saved.get('metric')!r}")
  numbers = len(scores) - block + 1
  if (any(isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) for s in scores[:numbers])
      or any(s is not None for s in scores[numbers:])):
    raise VisRegionError(f"{path}: layer_scores", f"expected scores of blocks of {block} layers "
                         f"({numbers} finite numbers, then {block - 1} nulls)")
  return [float(s) if s is not None else None for s in scores]


def calibration_source(config):
  p = config.prune
  for key in ("calibration_samples", "batch_size"):
    if p[key] < 1:
      raise VisRegionError(f"prune.{key}", f"expected at least 1, got {p[key]}")
  source = sources.JsonSource(p.calibration_json, config.data.image_root) if p.calibration_json \
      else open_source(config.data, "train")
  if source is None or len(source) == 0:
    raise VisRegionError(p.calibration_json or "data.train_json", "expected at least one calibration sample")
  return source


def calibration_batches(source, tokenizer, data_config, num_samples: int, batch_size: int, seed: int):
  """Collated batches of the first `num_samples` usable samples in a seeded order."""
  loader = pipeline.SampleLoader(source, tokenizer, data_config)
  records, used = [], 0
  for index in np.random.default_rng(seed).permutation(len(source)):
    if used == num_samples:
      break
    record = loader(index)
    if "skip" in record:
      continue
    records.append(record)
    used += 1
    if len(records) == batch_size:
      yield pipeline.collate(records, data_config)
      records = []
  if records:
    yield pipeline.collate(records, data_config)


def run(config) -> dict:
  """Prunes as configured; returns the report (also written to WORKDIR/prune)."""
  p = config.prune
  workdir = os.path.abspath(config.workdir)
  model_dir = model_dir_of(config, workdir)
  model = load_model(model_dir, dtype=config.model.get("dtype") or None)
  num_layers = len(model.layers)
  region_layers = region_of(config, workdir, num_layers)
  block = block_size_of(p, num_layers)
  choose_layers([0.0] * (num_layers - block + 1) + [None] * (block - 1), p, region_layers)  # k fits?
  scores_json = p.get("scores_json", "")
  saved_scores = read_scores(scores_json, model, block, p.metric) if scores_json else None
  tokenizer = load_tokenizer(model.config.source)
  data_config = data_config_for(config, model, tokenizer, model_dir if os.path.isdir(model_dir) else "")
  source = calibration_source(config)

  def batches():
    return calibration_batches(source, tokenizer, data_config, p.calibration_samples, p.batch_size, config.seed)

  latency_batch = next(batches(), None)
  if latency_batch is None:
    raise VisRegionError(p.calibration_json or "data.train_json", "expected at least one usable calibration sample")
  if saved_scores is None:
    values = prune.layer_scores(model, batches(), metric=p.metric, block_size=block, tokens=p.tokens)
    saved_scores = [float(s) for s in values] + [None] * (block - 1)
  removed = choose_layers(saved_scores, p, region_layers)
  out_dir = os.path.join(workdir, "prune")
  os.makedirs(out_dir, exist_ok=True)
  write_file_atomically(os.path.join(out_dir, "scores.json"), json.dumps(
      {"layer_scores": saved_scores, "region": list(region_layers), "removed": list(removed),
       "metric": p.metric}, indent=2))
  plots.layer_scores_chart(os.path.join(out_dir, "scores.png"), saved_scores, region=region_layers,
                           removed=removed, title=f"{p.metric} per layer (block {block}), removed {list(removed)}",
                           y_label=p.metric)
  log_line(f"scores {[round(s, 4) for s in saved_scores if s is not None]}; region {list(region_layers)}; "
                 f"removing {list(removed)}")
  pruned = prune.drop_layers(model, removed)
  hf_dir = os.path.join(out_dir, "hf")
  to_hf(pruned, hf_dir)
  report = {"model": model_dir, "num_layers": {"before": num_layers, "after": len(pruned.layers)},
            "removed": list(removed), "metric": p.metric, "tokens": p.tokens, "block_size": block,
            "region": {"before": list(region_layers), "after": list(prune.remap_layers(region_layers, removed))},
            "latency_batch": list(latency_batch["input_ids"].shape),
            "before": measure(config, model, tokenizer, data_config, latency_batch),
            "after": measure(config, pruned, tokenizer, data_config, latency_batch)}
  write_report(out_dir, report)
  log_line(f"wrote {out_dir}: " + json.dumps({k: [report["before"][k], report["after"][k]] for k in METRICS}))
  return report
