"""The pruning job of `python -m visregion_jax.prune --config configs/NAME.py`.

Prunes the model of a region training run (`WORKDIR/hf`, or `prune.model`): scores
its decoder layers on calibration samples, removes layers outside the visual region
(prune/selection.py: the `prune.layers` given, or `prune.k` chosen one-shot or
`prune.iterative`), optionally heals the shallower model by a short training
(prune/heal.py), exports it and measures every stage. Every key is checked before the
model loads (prune/checks.py). Everything lands in WORKDIR/prune/:

  scores.json  {"layer_scores", "region", "removed", "metric"}, layer indices of the
               model before pruning. layer_scores has one entry per decoder layer:
               entry i scores the block of b layers starting at layer i, where b is
               prune.block_size, or prune.k with prune.contiguous (whose selection
               compares blocks of k layers); the last b - 1 entries are null (no full
               block starts there) and those layers are never removed. With b = 1 it
               is simply one score per layer. `prune.scores_json` reuses such a file.
  scores.png   the scores as bars, region and removed layers in their own colours
  hf/          the pruned model, healed when prune.heal_steps > 0 (transformers loads
               it with L - k layers)
  pruned/      with healing: the pruned model before healing (healing's init_from)
  heal/        with healing: its training workdir (checkpoints, metrics.jsonl); a rerun
               of the command resumes healing from its last checkpoint
  report.md, report.json  held-out answer accuracy, text perplexity, forward latency
               (min / median / spread, with warnings when the comparison is not to be
               trusted: prune/latency.py) and parameter count before pruning, after
               it and after healing; how the layers were chosen and healed

Calibration uses the first `prune.calibration_samples` usable samples of
`prune.calibration_json` (default: the training data) in the order of
numpy.random.default_rng(seed).permutation, through the training pipeline's loader
and collate, streamed a batch at a time (data/calibration.py). The region is the training run's
WORKDIR/region.json, else the config's region settings.
"""

import json
import os

from visregion_jax import plots, prune
from visregion_jax.console import log_line
from visregion_jax.convert import load_tokenizer, to_hf
from visregion_jax.data import calibration, sources
from visregion_jax.data.from_config import data_config_for, open_source
from visregion_jax.errors import VisRegionError
from visregion_jax.loading import load_model
from visregion_jax.models.lvlm import LVLM
from visregion_jax.prune import checks
from visregion_jax.prune.heal import heal, heal_layers
from visregion_jax.prune.latency import time_models
from visregion_jax.prune.report import add_latency, quality, write_report
from visregion_jax.prune.selection import select
from visregion_jax.publish import replace_directory, write_file_atomically


def calibration_source(config):
  p = config.prune
  source = sources.JsonSource(p.calibration_json, config.data.image_root) if p.calibration_json \
      else open_source(config.data, "train")
  if source is None or len(source) == 0:
    raise VisRegionError(p.calibration_json or "data.train_json", "expected at least one calibration sample")
  return source


class PruneJob:
  """One prune command: the checked settings, the model's tokenizer and data settings,
  and the report as it fills in."""

  def __init__(self, config):
    self.config, self.p = config, config.prune
    self.workdir = os.path.abspath(config.workdir)
    self.out_dir = os.path.join(self.workdir, "prune")
    self.checked = checks.check(config, self.workdir)
    self.source = calibration_source(config)
    self.tokenizer = self.data_config = self.latency_batch = None
    self.is_lvlm = False

  def load(self):
    return load_model(self.checked.model_dir, dtype=self.config.model.get("dtype") or None)

  def batches(self):
    p = self.p
    return calibration.calibration_batches(self.source, self.tokenizer, self.data_config, p.calibration_samples,
                               p.batch_size, self.config.seed)

  def prepare_data(self, model) -> None:
    model_dir = self.checked.model_dir
    self.is_lvlm = isinstance(model, LVLM)
    self.tokenizer = load_tokenizer(model.config.source)
    self.data_config = data_config_for(self.config, model, self.tokenizer,
                                       model_dir if os.path.isdir(model_dir) else "")
    self.latency_batch = next(self.batches(), None)
    if self.latency_batch is None:
      raise VisRegionError(self.p.calibration_json or "data.train_json",
                           "expected at least one usable calibration sample")

  def choose(self, model) -> dict:
    """Scores, the layers to remove, scores.json and its chart; the report's start."""
    p, c = self.p, self.checked
    scores, removed, rounds = select(model, self.batches, p, c.region, c.block, c.scores)
    os.makedirs(self.out_dir, exist_ok=True)
    write_file_atomically(os.path.join(self.out_dir, "scores.json"), json.dumps(
        {"layer_scores": scores, "region": list(c.region), "removed": list(removed), "metric": p.metric}, indent=2))
    plots.layer_scores_chart(os.path.join(self.out_dir, "scores.png"), scores, region=c.region, removed=removed,
                             title=f"{p.metric} per layer (block {c.block}), removed {list(removed)}",
                             y_label=p.metric)
    log_line(f"scores {[round(s, 4) for s in scores if s is not None]}; region {list(c.region)}; "
             f"removing {list(removed)}")
    mode = "given" if c.layers else "iterative" if p.iterative else "one-shot"
    return {"model": c.model_dir, "num_layers": {"before": c.num_layers, "after": c.num_layers - len(removed)},
            "removed": list(removed),
            "selection": {"mode": mode, "k": len(removed), "layers": list(c.layers), "metric": p.metric,
                          "tokens": p.tokens, "block_size": c.block, "contiguous": p.contiguous,
                          "allow_region": p.allow_region, "rounds": rounds},
            "region": {"before": list(c.region), "after": list(prune.remap_layers(c.region, removed))},
            "latency_batch": list(self.latency_batch["input_ids"].shape), "heal": None, "healed": None}

  def prune(self) -> dict:
    """Loads, chooses, exports the pruned model (to hf/, or pruned/ when healing
    follows) and measures both models; without healing, times them too."""
    model = self.load()
    self.prepare_data(model)
    report = self.choose(model)
    pruned = prune.drop_layers(model, report["removed"])
    to_hf(pruned, os.path.join(self.out_dir, "pruned" if self.checked.heal else "hf"))
    report["before"] = quality(self.config, model, self.tokenizer, self.data_config, "before")
    report["pruned"] = quality(self.config, pruned, self.tokenizer, self.data_config, "pruned")
    if not self.checked.heal:
      add_latency(report, time_models({"before": model, "pruned": pruned}, self.latency_batch,
                                      self.p.latency_runs))
    return report

  def heal(self, report: dict) -> None:
    """Heals the pruned model (resuming an interrupted healing), publishes its export as
    hf/, measures it and times the three models (the first two loaded again: healing
    had the memory to itself)."""
    p, c = self.p, self.checked
    layers = heal_layers(c.heal, c.region, report["removed"], c.num_layers)
    heal_dir = os.path.join(self.out_dir, "heal")
    log_line(f"healing layers {list(layers)} of the pruned model for {p.heal_steps} steps in {heal_dir}")
    done = heal(self.config, heal_dir, layers, os.path.join(self.out_dir, "pruned"), self.is_lvlm)
    hf_dir = os.path.join(self.out_dir, "hf")
    replace_directory(done.pop("hf_dir"), hf_dir)
    report["heal"] = {"steps": p.heal_steps, "layers": list(layers),
                      "layers_spec": c.heal if isinstance(c.heal, str) else list(c.heal),
                      "lora_rank": p.heal_lora_rank, "lora_alpha": float(p.heal_lora_alpha),
                      "lr": float(p.heal_lr), "workdir": heal_dir, **done}
    healed = load_model(hf_dir, dtype=self.config.model.get("dtype") or None)
    report["healed"] = quality(self.config, healed, self.tokenizer, self.data_config, "healed")
    model = self.load()
    pruned = prune.drop_layers(model, report["removed"])
    add_latency(report, time_models({"before": model, "pruned": pruned, "healed": healed}, self.latency_batch,
                                    p.latency_runs))


def run(config) -> dict:
  """Prunes (and heals) as configured; returns the report (also written to WORKDIR/prune)."""
  job = PruneJob(config)
  report = job.prune()
  if job.checked.heal:
    job.heal(report)
  write_report(job.out_dir, report)
  final = "healed" if report["healed"] else "pruned"
  log_line(f"wrote {job.out_dir}: " + json.dumps(
      {k: [report["before"][k], report[final][k]] for k in ("eval_accuracy", "text_perplexity",
                                                             "forward_latency_s", "num_params")}))
  return report
