"""The training loop of `python -m visregion_jax.train`.

Visual-region training: the projector and a sparse set of decoder layers (fully, or
through LoRA) are updated, everything else stays frozen, as the training plan says.
The loop runs a jitted step over a device mesh, logs `metrics.jsonl`, evaluates,
checkpoints (trainable state, optimizer, step) and resumes exactly from
the latest checkpoint when started again on the same workdir; at the end it can
export to HF with LoRA merged.
"""

import json
import os
import signal
import time

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from visregion_jax import optim, sharding
from visregion_jax.benchmarks import job as benchmark_job
from visregion_jax.console import log_line
from visregion_jax.convert import load_tokenizer, to_hf
from visregion_jax.data import packing, pipeline, skip
from visregion_jax.data.from_config import data_config_for, open_source
from visregion_jax.errors import Interrupted, VisRegionError
from visregion_jax.evaluation import PER_SAMPLE_KEYS, evaluate
from visregion_jax.plan import TrainingPlan
from visregion_jax.publish import write_file_atomically
from visregion_jax.train.builder import build_model, fingerprint
from visregion_jax.train.checkpoint import TrainCheckpoints
from visregion_jax.train.flops import step_flops
from visregion_jax.train.peak_flops import device_peak
from visregion_jax.train.preemption import StopSignals
from visregion_jax.train.prefetch import Prefetcher
from visregion_jax.train.progress import Progress
from visregion_jax.train.step import make_train_step
from visregion_jax.train.validate import validate
from visregion_jax.train.workdir_lock import WorkdirLock


def _short(metrics: dict) -> dict:
  return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items() if k not in PER_SAMPLE_KEYS}


class Trainer:
  """One run: the split model on the mesh, its optimizer, data and checkpoints."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    model, self.plan = build_model(config, workdir)
    self.num_layers = len(model.layers)
    self.base_fingerprint = fingerprint(model, self.plan)
    self.step_flops = step_flops(model, self.plan)
    # Process 0 alone reports, and alone measures a CPU peak: two measurements at once
    # on one machine would each see half of it, and the cache would keep that.
    self.peak = device_peak() if jax.process_index() == 0 else None
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
    self.counter = skip.SkipCounter()  # restored counts and non-finite steps
    self.data_skips = {}  # the pipeline's counts as of the last batch trained on
    self.data_state = None  # packing: where the row stream stands (data/packing.py)
    self.source = open_source(config.data, "train")
    self.checkpoints = TrainCheckpoints(workdir, keep=config.train.keep_checkpoints,
                                        keep_every=config.train.keep_every)
    self.step, self.bad_in_a_row = 0, 0

  def batches(self) -> Prefetcher:
    """This process's batches from the current step on (the same samples whatever the
    process count: data/pipeline.py), built and placed `train.prefetch` steps ahead."""
    self.data_skips = {}
    batches = pipeline.make_batches(self.source, self.tokenizer, self.data_config, counter=skip.SkipCounter(),
                                    process_index=jax.process_index(), process_count=jax.process_count(),
                                    start_step=self.step, pack_state=self.data_state)
    return Prefetcher(iter(batches), lambda arrays: sharding.global_batch(arrays, self.mesh),
                      self.config.train.prefetch)

  def skip_counts(self) -> dict:
    """Counts of skipped (and truncated) samples and non-finite steps, up to this step."""
    counts = self.counter.counts()
    for reason, n in self.data_skips.items():
      counts[reason] = counts.get(reason, 0) + n
    return counts

  def model(self):
    return nnx.merge(self.graphdef, self.params, self.frozen, self.rest)

  def evaluate(self) -> dict:
    return evaluate(self.config, self.model(), self.tokenizer, self.data_config)

  def benchmarks(self) -> dict:
    """The configured benchmarks (`eval.tasks`) on the model of this step, into
    WORKDIR/eval (at the last step) or WORKDIR/eval/step_N; {"task/metric": value} to log."""
    last = self.step == self.config.train.steps
    out_dir = os.path.join(self.workdir, "eval", "" if last else f"step_{self.step}")
    return benchmark_job.benchmark_metrics(self.config, self.model(), self.tokenizer, self.data_config, out_dir,
                                           f"{self.workdir} at step {self.step}", self.mesh)

  def restore_latest(self) -> None:
    latest = self.checkpoints.latest_intact_step()
    if latest is None:
      return
    self.params, self.opt_state, meta = self.checkpoints.restore(latest, self.params, self.opt_state)
    where = f"{self.checkpoints.directory}/{latest}"
    if meta["base_fingerprint"] != self.base_fingerprint:
      raise VisRegionError(where, "expected a checkpoint of this base model "
                           f"(fingerprint {meta['base_fingerprint']} != {self.base_fingerprint})")
    if "plan" in meta and TrainingPlan.from_json(meta["plan"]) != self.plan:
      raise VisRegionError(where, f"expected a checkpoint of this training plan ({self.plan.describe()}), "
                           f"got {meta['plan']}")
    self.step, self.bad_in_a_row = meta["step"], meta["bad_steps_in_a_row"]
    if self.data_config.packing:
      self.data_state = packing.PackState.from_json(meta.get("data_state"))
    for reason, n in meta["skipped"].items():
      self.counter.add(reason, n)
    log_line(f"resumed from step {self.step}")

  def last_checkpoint(self) -> str:
    step = self.checkpoints.latest_step()
    return "none yet" if step is None else self.checkpoints.step_dir(step)

  def check_finite_params(self, what: str) -> None:
    """Parameters that are not finite are never checkpointed or exported."""
    if not all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(self.params)):
      raise VisRegionError(f"step {self.step}", f"expected finite parameters to {what}; they diverged "
                           f"(lower train.lr); last finite checkpoint: {self.last_checkpoint()}")

  def save(self) -> None:
    self.check_finite_params("checkpoint")
    self.checkpoints.save(self.step, self.params, self.opt_state, {
        "step": self.step, "bad_steps_in_a_row": self.bad_in_a_row, "skipped": self.skip_counts(),
        "data_state": self.data_state.to_json() if self.data_state else None,
        "base_fingerprint": self.base_fingerprint, "init_from": str(self.config.model.init_from),
        "region_layers": list(self.plan.region_layers), "plan": self.plan.to_json()})

  def count_finite(self, finite: bool) -> None:
    """Counts a non-finite step (its update was skipped); too many in a row stop the run."""
    if finite:
      self.bad_in_a_row = 0
      return
    self.bad_in_a_row += 1
    self.counter.add("non_finite_step")
    if self.bad_in_a_row >= self.config.train.max_bad_steps or self.step == self.config.train.steps:
      raise VisRegionError(f"step {self.step}", f"expected a finite loss and gradients; {self.bad_in_a_row} "
                           "non-finite steps in a row, their updates skipped (lower train.lr or check the "
                           f"data); last finite checkpoint: {self.last_checkpoint()}")

  def run_step(self, step_fn, host: dict, local: dict, placed: dict) -> dict:
    """One optimizer step on this process's rows (`local` on the host, `placed` on the
    mesh); the metrics as host numbers."""
    profile = tuple(self.config.train.profile_steps)
    if profile and self.step + 1 == profile[0] and jax.process_index() == 0:
      jax.profiler.start_trace(os.path.join(self.workdir, "profile"))
    # The mesh in context is where the step's fused attention kernels read their shard_map
    # layout and its activations their row split. Evaluation runs outside it: generated
    # tokens must stay readable by every process.
    with jax.set_mesh(self.mesh):
      self.params, self.rest, self.opt_state, m = step_fn(
          self.params, self.frozen, self.rest, self.opt_state, placed, self.step)
    # Counted while the device runs; every process's rows are taken to be like this one's.
    processes = jax.process_count()
    flops = self.step_flops(local) * processes
    m = {"loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]), "finite": bool(m["finite"]),
         "tokens": int(local["attention_mask"].sum()) * processes,
         "slots": int(local["attention_mask"].size) * processes, "flops": flops}
    self.step += 1
    self.data_skips, self.data_state = host["skip_counts"], host.get("data_state")
    if profile and self.step == profile[-1] and jax.process_index() == 0:
      jax.block_until_ready(self.params)
      jax.profiler.stop_trace()
      log_line(f"wrote a profile of steps {profile[0]}-{profile[-1]} to {os.path.join(self.workdir, 'profile')}")
    return m

  def log(self, m: dict, window: dict, progress: Progress, results: dict) -> None:
    """The step's metrics record (every `train.log_every` steps and the last)."""
    t = self.config.train
    for key in ("tokens", "slots", "flops"):
      window[key] += m[key]
    seconds = max(time.time() - window["start"], 1e-9)
    progress.advance(m["loss"], window["tokens"] / seconds)
    if self.step % t.log_every and self.step != t.steps:
      return
    totals = dict(window)
    window.update(tokens=0, slots=0, flops=0, start=time.time())
    if self.peak is None:  # not process 0
      return
    rates = {label: float(schedule(self.step - 1)) for label, schedule in sorted(self.schedules.items())}
    record = {"step": self.step, "loss": m["loss"], "learning_rate": next(iter(rates.values())),
              "learning_rates": rates, **self.throughput(totals, seconds),
              "step_time_s": results["step_times_s"][-1], "grad_norm": m["grad_norm"],
              "skipped_samples": sum(n for r, n in self.skip_counts().items() if r != skip.TRUNCATED),
              "skip_reasons": self.skip_counts()}
    progress.record(record, f"step {self.step}/{t.steps} loss {m['loss']:.4f} grad_norm {m['grad_norm']:.3f} "
                    f"lr {record['learning_rate']:.2e} {record['tokens_per_sec']:.0f} tok/s "
                    f"pad {100 * record['padding_fraction']:.0f}% "
                    f"{record['model_tflops_per_sec_per_device']:.3g} TFLOP/s/dev MFU {100 * record['mfu']:.3g}% "
                    f"skipped {record['skipped_samples']}")

  def throughput(self, window: dict, seconds: float) -> dict:
    """Over a logging window: real (non-padding) tokens per second, the padding share of
    the batches' token slots, model FLOP/s per device (train/flops.py) and their share
    of the device's peak (train/peak_flops.py)."""
    per_device = window["flops"] / seconds / jax.device_count()
    return {"tokens_per_sec": window["tokens"] / seconds,
            "padding_fraction": 1.0 - window["tokens"] / max(window["slots"], 1),
            "model_tflops_per_sec_per_device": per_device / 1e12, "mfu": per_device / self.peak.flops_per_sec}

  def stop(self, signum: int) -> None:
    """Saves the state at this step boundary (unless just saved) and raises Interrupted."""
    if self.checkpoints.latest_step() != self.step:
      self.save()
    self.checkpoints.wait()
    raise Interrupted(signal.Signals(signum).name, signum, self.step,
                      os.path.join(self.checkpoints.directory, str(self.step)))

  def train(self, progress: Progress, results: dict) -> None:
    t = self.config.train
    step_fn = jax.jit(make_train_step(self.graphdef, self.tx, t.grad_accum, self.config.seed),
                      donate_argnums=(0, 3))
    window = {"tokens": 0, "slots": 0, "flops": 0, "start": time.time()}
    batches = self.batches()
    try:
      self.train_on(batches, step_fn, window, progress, results)
    finally:
      batches.close()

  def train_on(self, batches: Prefetcher, step_fn, window: dict, progress: Progress, results: dict) -> None:
    t, e = self.config.train, self.config.eval
    with StopSignals() as signals:
      while self.step < t.steps:
        started = time.time()
        item = next(batches, None)
        if item is None:
          log_line(f"data exhausted after {self.step} steps")
          break
        m = self.run_step(step_fn, *item)
        results["step_times_s"].append(time.time() - started)
        if len(results["step_times_s"]) == 1:
          log_line(f"first step (compilation included) took {results['step_times_s'][0]:.1f} s")
        self.count_finite(m["finite"])
        self.log(m, window, progress, results)
        if e.every and self.step % e.every == 0 and self.step != t.steps:
          progress.record({"step": self.step, **_short(self.evaluate()), **self.benchmarks()})
        if self.step % t.checkpoint_every == 0 or self.step == t.steps:
          self.save()
        stop = signals.requested()
        if stop:
          self.stop(stop)

  def export(self) -> str:
    """WORKDIR/hf: the trained model with LoRA merged; every process takes part in the
    gather, process 0 writes."""
    self.check_finite_params("export")
    exported = sharding.gathered_to_host(self.model())
    if jax.process_index() != 0:
      return ""
    self.plan.merge_lora(exported)
    return to_hf(exported, os.path.join(self.workdir, "hf"))


def prepare_workdir(config) -> tuple:
  """(the absolute workdir, its lock): one run per workdir; the resolved config, which
  pruning and exports read back, written once the lock is held."""
  workdir = os.path.abspath(config.workdir)
  os.makedirs(workdir, exist_ok=True)
  lock = WorkdirLock(workdir)
  if jax.process_index() == 0:
    lock.acquire()
    write_file_atomically(os.path.join(workdir, "config.json"), config.to_json(indent=2))
  return workdir, lock


def run(config) -> dict:
  """Trains as configured; returns the final metrics, the model and, for comparisons of
  runs (tools/region_study.py), the trained size, optimizer bytes and step times.
  Raises Interrupted (after a checkpoint) when SIGTERM or SIGINT stops it."""
  validate(config)
  workdir, lock = prepare_workdir(config)
  try:
    return train_locked(config, workdir)
  finally:
    lock.release()


def train_locked(config, workdir: str) -> dict:
  started = time.time()
  log_line(f"building the model ({config.model.init_from}) and the data pipeline")
  trainer = Trainer(config, workdir)
  trainer.restore_latest()
  log_line(f"built in {time.time() - started:.1f} s: {trainer.plan.describe()} of {trainer.num_layers}; "
           f"mesh {dict(trainer.mesh.shape)}")
  if trainer.peak is not None:
    log_line(f"MFU against {trainer.peak.flops_per_sec / 1e12:.4g} TFLOP/s per device: {trainer.peak.source}")
  results = {"trainable_params": int(sum(x.size for x in jax.tree.leaves(trainer.params))),
             "optimizer_bytes": int(sum(x.nbytes for x in jax.tree.leaves(trainer.opt_state))),
             "step_times_s": [], "tokenizer": trainer.tokenizer, "data_config": trainer.data_config}
  log_line(f"trainable {results['trainable_params']:,} params; optimizer state "
           f"{results['optimizer_bytes'] / 2**20:.1f} MiB; compiling the train step")
  progress = Progress(workdir, trainer.step, config.train.steps)
  try:
    if trainer.step == 0 and config.eval.at_start:
      results["before"] = trainer.evaluate()
      progress.record({"step": 0, **_short(results["before"])})
      log_line(f"before training: {json.dumps(_short(results['before']))}")
    trainer.train(progress, results)
    finish(config, trainer, progress, results)
  finally:
    progress.close()
    trainer.checkpoints.close()
  return results


def finish(config, trainer: Trainer, progress: Progress, results: dict) -> None:
  """After the last step: region.json, the final evaluation and the export."""
  if jax.process_index() == 0:
    with open(os.path.join(trainer.workdir, "region.json"), "w", encoding="utf-8") as f:
      json.dump({"region_layers": list(trainer.plan.region_layers), "num_layers": trainer.num_layers}, f)
  trainer.checkpoints.wait()
  if config.eval.at_end:
    results["after"] = trainer.evaluate()
    results["benchmarks"] = trainer.benchmarks()
    progress.record({"step": config.train.steps, **_short(results["after"]), **results["benchmarks"]})
    log_line(f"after training: {json.dumps(_short(results['after']))}")
  if config.train.export_hf:
    results["hf_dir"] = trainer.export() or None
    if results["hf_dir"]:
      log_line(f"exported to {results['hf_dir']}")
  results["model"] = trainer.model()
