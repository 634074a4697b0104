"""Benchmark: can the data pipeline feed the demo's training step on this CPU?

Measures, in one run:
  1. the samples/s `pipeline.make_batches` delivers over the demo's synthetic image-QA
     set (written to a temp dir with the demo's sizes), with SmolLM2's tokenizer plus
     the `<image>` token and the demo's "tokenizer" (chatml) template, images
     preprocessed at the demo tower's 48 px, for 0, 1 and 2 grain workers
     (`DataConfig.num_workers`; 0 = read threads in this process), steady state
     (the first batch, which pays for worker start-up, is timed apart);
  2. the samples/s the demo's training step consumes: SmolLM2-135M + the demo-sized
     random CLIP tower, batch 8, uniform 25% region with a full update, fp32,
     built and jitted by `bench_jax_step.Variant` exactly as `train.run` does, on
     the pipeline's own batches (their bucket lengths, 96 or 128);
  3. end to end: the step fed straight from the pipeline's iterator for each worker
     count, the wait for each batch timed apart from the step, since on a 2-core
     machine the workers compete with XLA for the cores (the step slows) even when
     no batch is ever waited for.

The ratio pipeline/consumption says how much headroom the input side has (goal:
>= 1, or the step waits for data); the per-stage breakdown (JSON read, tokenize,
image decode + preprocess, collate) says where pipeline time goes. Ratios are
measured in the same process, so the machine's speed cancels. A script, not a
test: it asserts nothing.

  .venv/bin/python tools/bench_data.py [--help]
"""

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_jax_step import Variant, demo_config, write_random_tower  # pylint: disable=wrong-import-position
from bench_load import OtherLoad  # pylint: disable=wrong-import-position
from bench_measure import Timed, header  # pylint: disable=wrong-import-position

os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' progress bars


@dataclasses.dataclass
class Demo:
  """The demo's step and the data that feeds it: built once, then measured every way."""
  variant: Variant
  tokenizer: object
  data_config: object
  source: object


def open_pipeline(source, tokenizer, data_config, workers: int):
  from visregion_jax.data import pipeline, skip  # pylint: disable=import-outside-toplevel
  config = dataclasses.replace(data_config, num_workers=workers)
  counter = skip.SkipCounter()
  return iter(pipeline.make_batches(source, tokenizer, config, counter=counter)), counter


def shape_key(batch: dict) -> tuple:
  return tuple((k, v.shape) for k, v in sorted(batch.items()))


def pipeline_rate(source, tokenizer, data_config, workers: int, batches: int) -> dict:
  """Steady-state samples/s over `batches` batches after the first one."""
  it, counter = open_pipeline(source, tokenizer, data_config, workers)
  with OtherLoad() as load:
    t0 = time.perf_counter()
    next(it)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(batches):
      next(it)
    elapsed = time.perf_counter() - t0
  it.close()
  return {"workers": workers, "rate": batches * data_config.global_batch_size / elapsed,
          "first_s": first_s, "others": load.cores, "skipped": counter.total_skipped()}


def stage_breakdown(source, tokenizer, data_config, samples: int) -> dict:
  """Seconds per sample of each stage of `SampleLoader`, run serially in this process."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  from visregion_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from visregion_jax.data.tokenize import tokenize_conversation  # pylint: disable=import-outside-toplevel
  loader = pipeline.SampleLoader(source, tokenizer, data_config)
  totals = {"read": 0.0, "tokenize": 0.0, "images": 0.0, "collate": 0.0}
  records = []
  for i in range(samples):
    t0 = time.perf_counter()
    record = source[i]
    t1 = time.perf_counter()
    tokens = tokenize_conversation(record["conversations"], len(record["images"]), tokenizer,
                                   data_config.tokenize_config())
    t2 = time.perf_counter()
    pixels = loader.decode_images(record["images"], i)
    t3 = time.perf_counter()
    totals["read"] += t1 - t0
    totals["tokenize"] += t2 - t1
    totals["images"] += t3 - t2
    records.append({"index": i, "input_ids": tokens.input_ids, "labels": tokens.labels,
                    "pixel_values": pixels, "truncated": tokens.truncated})
  b = data_config.global_batch_size
  t0 = time.perf_counter()
  for j in range(0, len(records) - b + 1, b):
    pipeline.collate(records[j:j + b], data_config)
  totals["collate"] = time.perf_counter() - t0
  lengths = [len(r["input_ids"]) for r in records]
  out = {k: v / samples for k, v in totals.items()}
  out["lengths"] = (min(lengths), int(np.median(lengths)), max(lengths))
  return out


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description="Data-pipeline samples/s (0, 1, 2 grain workers) beside the samples/s the demo's "
                  "training step consumes, and end to end, on this CPU; one run, as ratios.")
  parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
  parser.add_argument("--batches", type=int, default=40,
                      help="timed pipeline batches per worker count (after the first)")
  parser.add_argument("--steps", type=int, default=4, help="timed training steps (after warm-up)")
  parser.add_argument("--e2e-steps", type=int, default=5,
                      help="end-to-end steps per worker count (0 skips that part)")
  parser.add_argument("--breakdown-samples", type=int, default=200,
                      help="samples for the per-stage breakdown (0 skips it)")
  parser.add_argument("--num-train", type=int, default=None,
                      help="synthetic train samples (default: the demo's)")
  return parser.parse_args(argv)


def write_demo_data(workdir: str, num_train) -> tuple:
  """(config, tower dir): the demo config on a random tower, its synthetic set written to `workdir`."""
  from visregion_jax.demo import synthetic  # pylint: disable=import-outside-toplevel
  tower_dir = write_random_tower(os.path.join(workdir, "tower"))
  config = demo_config(workdir, tower_dir, strategy="uniform", fraction=0.25, lora_rank=0)
  sizes = dict(config.demo.data_sizes or {})
  if num_train is not None:
    sizes["num_train"] = num_train
  t0 = time.perf_counter()
  synthetic.write_synthetic_dataset(config.data.image_root, seed=config.seed, **sizes)
  print(f"synthetic set {sizes} written in {time.perf_counter() - t0:.1f} s")
  return config, tower_dir


def build_demo(config, workdir: str, tower_dir: str) -> Demo:
  """The demo's step, tokenizer, data config and source, as `train.run` would build them."""
  from visregion_jax.convert import load_tokenizer  # pylint: disable=import-outside-toplevel
  from visregion_jax.data import sources  # pylint: disable=import-outside-toplevel
  from visregion_jax.data.from_config import data_config_for  # pylint: disable=import-outside-toplevel
  from visregion_jax.models.lvlm import abstract_lvlm  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  variant = Variant("demo", config, workdir)
  tokenizer = load_tokenizer(variant.model_config.source)
  data_config = data_config_for(config, abstract_lvlm(variant.model_config), tokenizer, tower_dir)
  source = sources.JsonSource(config.data.train_json, config.data.image_root)
  print(f"demo model built in {time.perf_counter() - t0:.1f} s: region layers "
        f"{list(variant.layers)}, trainable {variant.trainable_params / 1e6:.2f} M; data: "
        f"{len(source)} samples, template {data_config.template!r}, images "
        f"{data_config.image.crop_size or data_config.image.size} px, "
        f"{data_config.num_image_tokens} image tokens, buckets {data_config.buckets}, batch "
        f"{data_config.global_batch_size}, read threads {data_config.read_threads}")
  return Demo(variant, tokenizer, data_config, source)


def consumption(demo: Demo, steps: int) -> dict:
  """Samples/s of the demo step alone, on the pipeline's own batches (every bucket warmed first)."""
  variant = demo.variant
  it, _ = open_pipeline(demo.source, demo.tokenizer, demo.data_config, 0)
  batches = [variant.device_batch(next(it)) for _ in range(steps + 2)]
  it.close()
  compile_s = 0.0
  for b in batches:
    if shape_key(b) not in variant.compiled:
      compile_s += variant.compile(b)[1]
      variant.step(b)
  timer = Timed("demo step")
  with OtherLoad() as load:
    for b in batches[2:]:
      timer.run(lambda b=b: variant.step(b))
  return {"rate": demo.data_config.global_batch_size / statistics.mean(timer.times), "timer": timer,
          "others": load.cores, "lengths": [int(b["input_ids"].shape[1]) for b in batches],
          "compile_s": compile_s}


def end_to_end(demo: Demo, workers: int, steps: int) -> dict:
  """The step pulling from the pipeline, as train.run does.

  The wait for each batch and the step are timed apart, so data stalls and the
  workers' competition for the cores show separately.
  """
  variant = demo.variant
  it, _ = open_pipeline(demo.source, demo.tokenizer, demo.data_config, workers)
  variant.step(variant.device_batch(next(it)))  # pays worker start-up (and any compile)
  waits, step_s = [], []
  with OtherLoad() as load:
    for _ in range(steps):
      t0 = time.perf_counter()
      b = variant.device_batch(next(it))
      t1 = time.perf_counter()
      if shape_key(b) not in variant.compiled:
        variant.compile(b)
      t2 = time.perf_counter()
      variant.step(b)
      waits.append(t1 - t0)
      step_s.append(time.perf_counter() - t2)
  it.close()
  return {"rate": demo.data_config.global_batch_size * len(step_s) / (sum(waits) + sum(step_s)),
          "wait": sum(waits) / (sum(waits) + sum(step_s)), "step": statistics.mean(step_s),
          "others": load.cores, "steps": step_s, "waits": waits}


def print_rates(rows: list, e2e: dict, step: dict, batch_size: int) -> None:
  """The table: each worker count's pipeline and end-to-end rates, then the step's own."""
  consume, mean_s = step["rate"], statistics.mean(step["timer"].times)
  print(f"demo data pipeline vs demo train step (batch {batch_size}, region uniform 25% full update, "
        "fp32); samples/s; step s = mean step time")
  print(f"{'measure':24s} {'samples/s':>9s} {'first batch s':>13s} {'pipeline/step':>13s} "
        f"{'others':>6s} | {'end-to-end':>10s} {'e2e/step':>8s} {'data wait':>9s} {'step s':>6s} "
        f"{'others':>6s}")
  for r in rows:
    e = e2e.get(r["workers"])
    tail = (f"{e['rate']:10.2f} {e['rate'] / consume:8.2f} {100 * e['wait']:8.1f}% {e['step']:6.2f} "
            f"{e['others']:6.2f}" if e else f"{'-':>10s}")
    print(f"{'pipeline, ' + str(r['workers']) + ' workers':24s} {r['rate']:9.1f} {r['first_s']:13.2f} "
          f"{r['rate'] / consume:13.1f} {r['others']:6.2f} | {tail}")
  print(f"{'train step consumes':24s} {consume:9.2f} {'-':>13s} {1.0:13.1f} {step['others']:6.2f} | "
        f"{'-':>10s} {'-':>8s} {'-':>9s} {mean_s:6.2f}")


def print_details(demo: Demo, e2e: dict, step: dict, stages, samples: int) -> None:
  """Below the table: every step time and batch wait, and where the pipeline's time goes."""
  timer, batch_size = step["timer"], demo.data_config.global_batch_size
  print(f"train step alone: mean {statistics.mean(timer.times):.2f} s, best {timer.best:.2f} s "
        f"(= {batch_size / timer.best:.2f} samples/s), {len(timer.times)} steps on sequence lengths "
        f"{step['lengths'][2:]} (buckets {demo.data_config.buckets}); compile {step['compile_s']:.1f} s for "
        f"{len(demo.variant.compiled)} shapes; step times {[round(t, 2) for t in timer.times]}")
  for w, e in e2e.items():
    print(f"end to end, {w} workers: step s {[round(t, 2) for t in e['steps']]}, batch wait ms "
          f"{[round(1000 * t) for t in e['waits']]}")
  if stages:
    total = sum(stages[k] for k in ("read", "tokenize", "images", "collate"))
    print(f"pipeline stages, serial, ms/sample over {samples} samples: " +
          ", ".join(f"{k} {1000 * stages[k]:.2f}" for k in ("read", "tokenize", "images", "collate"))
          + f"; total {1000 * total:.2f} (= {1 / total:.0f} samples/s on one core); token lengths "
          f"min/median/max {stages['lengths']}")
  print("pipeline/step >= 1: the input side keeps up; e2e/step < 1 by the data wait and by the "
        "workers' competition for the cores (step s above the step alone); others = cores used by "
        "other processes (not this one or its workers) meanwhile.")


def main(argv=None) -> int:
  args = parse_args(argv)
  workers = [int(w) for w in args.workers.split(",") if w != ""]
  header()
  with tempfile.TemporaryDirectory(prefix="bench_data_") as workdir:
    config, tower_dir = write_demo_data(workdir, args.num_train)
    demo = build_demo(config, workdir, tower_dir)
    rows = [pipeline_rate(demo.source, demo.tokenizer, demo.data_config, w, args.batches) for w in workers]
    step = consumption(demo, args.steps)
    e2e = {w: end_to_end(demo, w, args.e2e_steps) for w in (workers if args.e2e_steps else ())}
    stages = (stage_breakdown(demo.source, demo.tokenizer, demo.data_config, args.breakdown_samples)
              if args.breakdown_samples else None)
  line = "=" * 112
  print("\n" + line)
  print_rates(rows, e2e, step, demo.data_config.global_batch_size)
  print("-" * len(line))
  print_details(demo, e2e, step, stages, args.breakdown_samples)
  print(line)
  return 0


if __name__ == "__main__":
  sys.exit(main())
