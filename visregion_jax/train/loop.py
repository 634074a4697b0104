"""The training loop of `python -m visregion_jax.train`.

Visual-region training: the projector and a sparse set of decoder layers (fully, or
through LoRA) are updated, everything else stays frozen, as the training plan says.
The loop runs a jitted step over a device mesh, logs `metrics.jsonl`, evaluates,
checkpoints (trainable state, optimizer, data iterator, step) and resumes exactly from
the latest checkpoint when started again on the same workdir; at the end it can
export to HF with LoRA merged.
"""

import json
import os
import time

import jax
from flax import nnx
from jax.sharding import NamedSharding

from visregion_jax import optim, sharding
from visregion_jax.console import log_line
from visregion_jax.convert import load_tokenizer, to_hf
from visregion_jax.data import pipeline, skip
from visregion_jax.data.from_config import data_config_for, open_source
from visregion_jax.errors import VisRegionError
from visregion_jax.evaluation import evaluate
from visregion_jax.train.batching import check_batch
from visregion_jax.train.builder import build_model, fingerprint
from visregion_jax.train.checkpoint import TrainCheckpoints
from visregion_jax.train.metrics_log import MetricsLog
from visregion_jax.train.step import make_train_step


def _short(metrics: dict) -> dict:
  return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items() if k != "eval_examples"}


class Trainer:
  """One run: the split model on the mesh, its optimizer, data and checkpoints."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    check_batch(config.train, self.mesh)
    model, self.plan = build_model(config, workdir)
    self.num_layers = len(model.layers)
    self.base_fingerprint = fingerprint(model, self.plan)
    self.graphdef, params, frozen, rest = self.plan.split(model)
    self.params = jax.device_put(params, sharding.state_shardings(params, self.mesh))
    self.frozen = jax.device_put(frozen, sharding.state_shardings(frozen, self.mesh))
    self.rest = jax.device_put(rest, sharding.replicated(self.mesh))
    self.tx, self.schedules = optim.make_optimizer(config.train, self.plan.labels(self.params))
    # Eager init: each moment keeps its parameter's sharding; the scalar step counters are
    # placed on the mesh too, or the step would compile twice (once per placement).
    self.opt_state = jax.tree.map(
        lambda x: x if isinstance(getattr(x, "sharding", None), NamedSharding)
        else jax.device_put(x, sharding.replicated(self.mesh)), self.tx.init(self.params))
    self.tokenizer = load_tokenizer(model.config.source)
    self.data_config = data_config_for(config, model, self.tokenizer, config.model.get("vision_tower"))
    self.counter = skip.SkipCounter()
    self.iterator = iter(pipeline.make_batches(
        open_source(config.data, "train"), self.tokenizer, self.data_config, counter=self.counter,
        process_index=jax.process_index(), process_count=jax.process_count()))
    self.checkpoints = TrainCheckpoints(workdir)
    self.step, self.bad_in_a_row = 0, 0

  def model(self):
    return nnx.merge(self.graphdef, self.params, self.frozen, self.rest)

  def evaluate(self) -> dict:
    return evaluate(self.config, self.model(), self.tokenizer, self.data_config)

  def restore_latest(self) -> None:
    latest = self.checkpoints.latest_step()
    if latest is None:
      return
    self.params, self.opt_state, meta = self.checkpoints.restore(latest, self.params, self.opt_state,
                                                                 self.iterator)
    where = f"{self.checkpoints.directory}/{latest}"
    if meta["base_fingerprint"] != self.base_fingerprint:
      raise VisRegionError(where, "expected a checkpoint of this base model "
                           f"(fingerprint {meta['base_fingerprint']} != {self.base_fingerprint})")
    if meta.get("plan", self.plan.to_json()) != self.plan.to_json():
      raise VisRegionError(where, f"expected a checkpoint of this training plan ({self.plan.describe()}), "
                           f"got {meta['plan']}")
    self.step, self.bad_in_a_row = meta["step"], meta["bad_steps_in_a_row"]
    for reason, n in meta["skipped"].items():
      self.counter.add(reason, n)
    log_line(f"resumed from step {self.step}")

  def save(self) -> None:
    self.checkpoints.save(self.step, self.params, self.opt_state, self.iterator, {
        "step": self.step, "bad_steps_in_a_row": self.bad_in_a_row, "skipped": self.counter.counts(),
        "base_fingerprint": self.base_fingerprint, "init_from": str(self.config.model.init_from),
        "region_layers": list(self.plan.region_layers), "plan": self.plan.to_json()})

  def count_finite(self, finite: bool) -> None:
    """Counts a non-finite step (its update was skipped); too many in a row stop the run."""
    if finite:
      self.bad_in_a_row = 0
      return
    self.bad_in_a_row += 1
    self.counter.add("non_finite_step")
    if self.bad_in_a_row >= self.config.train.max_bad_steps:
      raise VisRegionError(f"step {self.step}", f"expected a finite loss; {self.bad_in_a_row} non-finite "
                           "steps in a row (lower train.lr or check the data)")

  def train(self, metrics_log: MetricsLog, results: dict) -> None:
    t, e = self.config.train, self.config.eval
    step_fn = jax.jit(make_train_step(self.graphdef, self.tx, t.grad_accum, self.config.seed),
                      donate_argnums=(0, 3))
    first_label = sorted(self.schedules)[0]
    window_tokens, window_start = 0, time.time()
    while self.step < t.steps:
      try:
        local = next(self.iterator)
      except StopIteration:
        log_line(f"data exhausted after {self.step} steps")
        break
      local.pop("index")
      window_tokens += int(local["attention_mask"].sum()) * jax.process_count()
      started = time.time()
      self.params, self.rest, self.opt_state, m = step_fn(
          self.params, self.frozen, self.rest, self.opt_state, sharding.global_batch(local, self.mesh), self.step)
      loss = float(m["loss"])
      results["step_times_s"].append(time.time() - started)
      self.step += 1
      self.count_finite(bool(m["finite"]))
      if self.step % t.log_every == 0 or self.step == t.steps:
        elapsed = max(time.time() - window_start, 1e-9)
        record = {"step": self.step, "loss": loss, "learning_rate": float(self.schedules[first_label](self.step - 1)),
                  "tokens_per_sec": window_tokens / elapsed, "step_time_s": results["step_times_s"][-1],
                  "skipped_samples": self.counter.total_skipped(), "grad_norm": float(m["grad_norm"]),
                  "skip_reasons": self.counter.counts()}
        metrics_log.write(record)
        log_line(f"step {self.step}/{t.steps} loss {loss:.4f} lr {record['learning_rate']:.2e} "
                 f"{record['tokens_per_sec']:.0f} tok/s skipped {record['skipped_samples']}")
        window_tokens, window_start = 0, time.time()
      if e.every and self.step % e.every == 0 and self.step != t.steps:
        metrics_log.write({"step": self.step, **_short(self.evaluate())})
      if self.step % t.checkpoint_every == 0 or self.step == t.steps:
        self.save()

  def export(self) -> str:
    """WORKDIR/hf: the trained model with LoRA merged; every process takes part in the
    gather, process 0 writes."""
    exported = sharding.gathered_to_host(self.model())
    if jax.process_index() != 0:
      return ""
    self.plan.merge_lora(exported)
    return to_hf(exported, os.path.join(self.workdir, "hf"))


def prepare_workdir(config) -> str:
  """The absolute workdir, with the resolved config that pruning and exports read back."""
  workdir = os.path.abspath(config.workdir)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json(indent=2))
  return workdir


def run(config) -> dict:
  """Trains as configured; returns the final metrics, the model and, for comparisons of
  runs (tools/region_study.py), the trained size, optimizer bytes and step times."""
  sharding.maybe_initialize_distributed(config.get("distributed", False))
  workdir = prepare_workdir(config)
  trainer = Trainer(config, workdir)
  trainer.restore_latest()
  metrics_log = MetricsLog(workdir, trainer.step)
  results = {"trainable_params": int(sum(x.size for x in jax.tree.leaves(trainer.params))),
             "optimizer_bytes": int(sum(x.nbytes for x in jax.tree.leaves(trainer.opt_state))),
             "step_times_s": [], "tokenizer": trainer.tokenizer, "data_config": trainer.data_config}
  log_line(f"{trainer.plan.describe()} of {trainer.num_layers}; trainable {results['trainable_params']:,} "
           f"params; mesh {dict(trainer.mesh.shape)}")
  if trainer.step == 0 and config.eval.at_start:
    results["before"] = trainer.evaluate()
    log_line(f"before training: {json.dumps(_short(results['before']))}")
  trainer.train(metrics_log, results)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "region.json"), "w", encoding="utf-8") as f:
      json.dump({"region_layers": list(trainer.plan.region_layers), "num_layers": trainer.num_layers}, f)
  trainer.checkpoints.wait()
  trainer.checkpoints.close()
  if config.eval.at_end:
    results["after"] = trainer.evaluate()
    metrics_log.write({"step": config.train.steps, **_short(results["after"])})
    log_line(f"after training: {json.dumps(_short(results['after']))}")
  if config.train.export_hf:
    results["hf_dir"] = trainer.export() or None
    if results["hf_dir"]:
      log_line(f"exported to {results['hf_dir']}")
  results["model"] = trainer.model()
  return results
