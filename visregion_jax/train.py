"""`python -m visregion_jax.train --config configs/NAME.py [--config.KEY=VALUE ...]`.

Visual-region training: the projector and a sparse set of decoder layers (fully, or
through LoRA) are updated, everything else stays frozen. The loop runs a jitted step
over a device mesh, logs `metrics.jsonl`, evaluates, checkpoints (trainable state,
optimizer, data iterator, step) and resumes exactly from the latest checkpoint when
started again on the same workdir; at the end it can export to HF with LoRA merged.
"""

import json
import math
import os
import sys
import time

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from visregion_jax import checkpoint, evaluate, model_builder, optim, region, sharding
from visregion_jax.convert import load_tokenizer, to_hf
from visregion_jax.data import image_processing, pipeline, skip, sources
from visregion_jax.errors import VisRegionError
from visregion_jax.train_step import make_train_step


def log_line(text: str) -> None:
  if jax.process_index() == 0:
    print(text, flush=True)


class MetricsLog:
  """`metrics.jsonl`; on resume, lines past the restored step are dropped (they would repeat)."""

  def __init__(self, workdir: str, resume_step: int):
    self.path = os.path.join(workdir, "metrics.jsonl")
    if jax.process_index() != 0:
      self.path = None
      return
    kept = []
    if os.path.exists(self.path):
      with open(self.path, encoding="utf-8") as f:
        kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= resume_step]
    with open(self.path, "w", encoding="utf-8") as f:
      f.writelines(kept)

  def write(self, record: dict) -> None:
    if self.path:
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def image_processor_config(model, tower_dir):
  """The tower's preprocessor_config.json when present, else its size with CLIP/SigLIP stats."""
  path = os.path.join(tower_dir, "preprocessor_config.json") if tower_dir else ""
  if path and os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return image_processing.ImageProcessorConfig.from_hf_dict(json.load(f), path)
  vision = model.config.vision
  if vision.kind == "clip":
    base = image_processing.ImageProcessorConfig.clip_336()
    return image_processing.ImageProcessorConfig(
        kind="clip", size=vision.image_size, crop_size=vision.image_size,
        image_mean=base.image_mean, image_std=base.image_std)
  return image_processing.ImageProcessorConfig(kind="siglip", size=vision.image_size, crop_size=None,
                                               image_mean=(0.5,) * 3, image_std=(0.5,) * 3)


def data_config_for(config, model, tokenizer, tower_dir) -> pipeline.DataConfig:
  d = config.data
  is_lvlm = hasattr(model, "vision_tower")
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
  return pipeline.DataConfig(
      template=d.template, max_length=d.max_length, global_batch_size=config.train.batch_size,
      image_token_id=model.config.image_token_id if is_lvlm else -1,
      num_image_tokens=model.config.num_image_tokens if is_lvlm else 0,
      image=image_processor_config(model, tower_dir) if is_lvlm else image_processing.ImageProcessorConfig.clip_336(),
      pad_token_id=int(pad or 0), pad_to_square=d.pad_to_square,
      max_images_per_sample=d.max_images_per_sample, buckets=tuple(d.buckets),
      num_workers=d.num_workers, seed=config.seed, num_epochs=d.get("num_epochs"))


def open_source(d, split: str):
  if d.get("tfds_dir"):
    return sources.TfdsSource(d.tfds_dir, split)
  path = d.train_json if split == "train" else d.get("eval_json")
  return sources.JsonSource(path, d.image_root) if path else None


def evaluate_model(config, model, tokenizer, data_config) -> dict:
  """Held-out answer accuracy, held-out loss and text perplexity (as configured)."""
  d, out = config.data, {}
  eval_source = open_source(d, "eval")
  if eval_source is not None:
    acc = evaluate.answer_accuracy(model, tokenizer, eval_source, data_config,
                                   limit=config.eval.num_samples, max_new_tokens=config.eval.max_new_tokens)
    out.update(eval_accuracy=acc["accuracy"], eval_accuracy_per_task=acc["per_task"],
               eval_examples=acc["examples"])
    out["eval_loss"] = evaluate.mean_loss(model, tokenizer, eval_source, data_config,
                                          limit=config.eval.num_samples)["loss"]
  if d.get("text_eval_json"):
    text = sources.JsonSource(d.text_eval_json, d.image_root)
    out["text_perplexity"] = evaluate.mean_loss(model, tokenizer, text, data_config,
                                                limit=config.eval.num_samples)["perplexity"]
  return out


def prepare_inputs(config) -> None:
  """Demo-style configs may ask for the synthetic data and a pretrained tower first."""
  if not config.data.get("synthetic_root"):
    return
  from visregion_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  dataset = synthetic.write_synthetic_dataset(config.data.synthetic_root, seed=config.seed,
                                              **dict(config.data.get("synthetic_sizes") or {}))
  if config.model.get("pretrain_vision_tower"):
    from visregion_jax import vision_pretrain  # pylint: disable=import-outside-toplevel
    vision_pretrain.pretrain_vision_tower(dataset, config.model.vision_tower, seed=config.seed,
                                          log=log_line, **dict(config.model.pretrain_vision_tower))


def run(config) -> dict:
  """Trains as configured; returns the final metrics."""
  sharding.maybe_initialize_distributed(config.get("distributed", False))
  workdir = os.path.abspath(config.workdir)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:  # what pruning and exports of this run read back
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json(indent=2))
  prepare_inputs(config)
  t = config.train
  if t.batch_size % t.grad_accum:
    raise VisRegionError("train.grad_accum", f"expected a divisor of train.batch_size={t.batch_size}")
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if (t.batch_size // t.grad_accum) % batch_shards:
    raise VisRegionError("train.batch_size", f"expected batch_size / grad_accum to be a multiple of "
                         f"mesh data*fsdp = {batch_shards}, got {t.batch_size} / {t.grad_accum}")
  model, layers = model_builder.build_model(config, workdir)
  base_fingerprint = model_builder.fingerprint(model)
  lora = config.region.lora_rank > 0
  train_vision = config.region.train_vision

  def trainable(path, variable):
    return (isinstance(variable, nnx.Param)
            and region.label_of(tuple(path), layers, lora=lora, train_vision=train_vision) != region.FROZEN)

  graphdef, params, frozen, rest = nnx.split(model, trainable, nnx.Param, ...)
  params = jax.device_put(params, sharding.state_shardings(params, mesh))
  frozen = jax.device_put(frozen, sharding.state_shardings(frozen, mesh))
  rest = jax.device_put(rest, sharding.replicated(mesh))
  labels = region.param_labels(params, layers, lora=lora, train_vision=train_vision)
  tx, schedules = optim.make_optimizer(t, labels)
  # Eager init: each moment keeps its parameter's sharding; the scalar step counters are
  # placed on the mesh too, or the step would compile twice (once per placement).
  opt_state = jax.tree.map(
      lambda x: x if isinstance(getattr(x, "sharding", None), NamedSharding)
      else jax.device_put(x, sharding.replicated(mesh)), tx.init(params))

  tokenizer = load_tokenizer(model.config.source)
  data_config = data_config_for(config, model, tokenizer, config.model.get("vision_tower"))
  counter = skip.SkipCounter()
  batches = pipeline.make_batches(open_source(config.data, "train"), tokenizer, data_config,
                                  counter=counter, process_index=jax.process_index(),
                                  process_count=jax.process_count())
  iterator = iter(batches)
  checkpoints = checkpoint.TrainCheckpoints(workdir)
  start = 0
  bad_in_a_row = 0
  latest = checkpoints.latest_step()
  if latest is not None:
    params, opt_state, meta = checkpoints.restore(latest, params, opt_state, iterator)
    if meta["base_fingerprint"] != base_fingerprint:
      raise VisRegionError(f"{checkpoints.directory}/{latest}", "expected a checkpoint of this base model "
                           f"(fingerprint {meta['base_fingerprint']} != {base_fingerprint})")
    start, bad_in_a_row = meta["step"], meta["bad_steps_in_a_row"]
    for reason, n in meta["skipped"].items():
      counter.add(reason, n)
    log_line(f"resumed from step {start}")
  metrics_log = MetricsLog(workdir, start)
  # What a comparison of runs needs (tools/region_study.py): the trained size, the
  # optimizer's bytes and every step's wall time (the first one of a process compiles).
  results = {"trainable_params": int(sum(x.size for x in jax.tree.leaves(params))),
             "optimizer_bytes": int(sum(x.nbytes for x in jax.tree.leaves(opt_state))),
             "step_times_s": []}
  log_line(f"region layers {list(layers)} of {len(model.layers)}; "
           f"{'LoRA r=' + str(config.region.lora_rank) if lora else 'full update'}; "
           f"trainable {results['trainable_params']:,} params; mesh {dict(mesh.shape)}")

  def current_model():
    return nnx.merge(graphdef, params, frozen, rest)

  if start == 0 and config.eval.at_start:
    results["before"] = evaluate_model(config, current_model(), tokenizer, data_config)
    log_line(f"before training: {json.dumps(_short(results['before']))}")
  step_fn = jax.jit(make_train_step(graphdef, tx, t.grad_accum, config.seed), donate_argnums=(0, 3))
  first_label = sorted(set(jax.tree.leaves(labels)))[0]
  window_tokens, window_start = 0, time.time()
  for step in range(start, t.steps):
    try:
      local = next(iterator)
    except StopIteration:
      log_line(f"data exhausted after {step} steps")
      break
    local.pop("index")
    tokens = int(local["attention_mask"].sum()) * jax.process_count()
    batch = sharding.global_batch(local, mesh)
    started = time.time()
    params, rest, opt_state, m = step_fn(params, frozen, rest, opt_state, batch, step)
    loss = float(m["loss"])
    step_time = time.time() - started
    results["step_times_s"].append(step_time)
    window_tokens += tokens
    if not bool(m["finite"]):
      bad_in_a_row += 1
      counter.add("non_finite_step")
      if bad_in_a_row >= t.max_bad_steps:
        raise VisRegionError(f"step {step + 1}", f"expected a finite loss; {bad_in_a_row} non-finite "
                             "steps in a row (lower train.lr or check the data)")
    else:
      bad_in_a_row = 0
    done = step + 1
    if done % t.log_every == 0 or done == t.steps:
      elapsed = max(time.time() - window_start, 1e-9)
      record = {"step": done, "loss": loss, "learning_rate": float(schedules[first_label](step)),
                "tokens_per_sec": window_tokens / elapsed, "step_time_s": step_time,
                "skipped_samples": counter.total_skipped(), "grad_norm": float(m["grad_norm"]),
                "skip_reasons": counter.counts()}
      metrics_log.write(record)
      log_line(f"step {done}/{t.steps} loss {loss:.4f} lr {record['learning_rate']:.2e} "
               f"{record['tokens_per_sec']:.0f} tok/s skipped {record['skipped_samples']}")
      window_tokens, window_start = 0, time.time()
    if config.eval.every and done % config.eval.every == 0 and done != t.steps:
      metrics_log.write({"step": done, **_short(evaluate_model(config, current_model(), tokenizer, data_config))})
    if done % t.checkpoint_every == 0 or done == t.steps:
      checkpoints.save(done, params, opt_state, iterator, {
          "step": done, "bad_steps_in_a_row": bad_in_a_row, "skipped": counter.counts(),
          "base_fingerprint": base_fingerprint, "init_from": str(config.model.init_from),
          "region_layers": list(layers)})
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "region.json"), "w", encoding="utf-8") as f:
      json.dump({"region_layers": list(layers), "num_layers": len(model.layers)}, f)
  checkpoints.wait()
  checkpoints.close()
  final = current_model()
  if config.eval.at_end:
    results["after"] = evaluate_model(config, final, tokenizer, data_config)
    metrics_log.write({"step": t.steps, **_short(results["after"])})
    log_line(f"after training: {json.dumps(_short(results['after']))}")
  exported = sharding.gathered_to_host(final) if t.export_hf else None  # every process takes part
  if t.export_hf and jax.process_index() == 0:
    results["hf_dir"] = to_hf(exported, os.path.join(workdir, "hf"))
    log_line(f"exported to {results['hf_dir']}")
    if config.eval.get("transformers_check") and open_source(config.data, "eval") is not None:
      from visregion_jax import hf_check  # pylint: disable=import-outside-toplevel
      results["transformers_check"] = hf_check.answer_with_transformers(
          results["hf_dir"], tokenizer, open_source(config.data, "eval"), data_config,
          max_new_tokens=config.eval.max_new_tokens)
      log_line(f"transformers, exported model: {json.dumps(results['transformers_check'])}")
  results["model"] = final
  return results


def load_trained_model(workdir: str):
  """The model of a training run's latest checkpoint: the base rebuilt from the run's
  config (the checkpoint references it), the trained parameters restored over it."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from visregion_jax.convert.tensor_files import read_json_object  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict(read_json_object(os.path.join(workdir, "config.json")))
  checkpoints = checkpoint.TrainCheckpoints(workdir)
  step = checkpoints.latest_step()
  if step is None:
    raise VisRegionError(checkpoints.directory, "expected at least one training checkpoint")
  model, layers = model_builder.build_model(config, workdir)
  lora = config.region.lora_rank > 0

  def trainable(path, variable):
    return (isinstance(variable, nnx.Param) and region.label_of(
        tuple(path), layers, lora=lora, train_vision=config.region.train_vision) != region.FROZEN)

  graphdef, params, rest = nnx.split(model, trainable, ...)
  params = checkpoints.restore_trainable(step, params)
  checkpoints.close()
  return nnx.merge(graphdef, params, rest)


def _short(metrics: dict) -> dict:
  return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items() if k != "eval_examples"}


def main(argv=None) -> int:
  from visregion_jax import cli  # pylint: disable=import-outside-toplevel
  from visregion_jax.config_loading import load_config  # pylint: disable=import-outside-toplevel

  def body():
    config = load_config(sys.argv[1:] if argv is None else argv, "python -m visregion_jax.train")
    if config.get("dry_run"):
      from visregion_jax import dry_run  # pylint: disable=import-outside-toplevel
      dry_run.report(config)
      return
    run(config)

  return cli.run_main(body)


if __name__ == "__main__":
  sys.exit(main())
