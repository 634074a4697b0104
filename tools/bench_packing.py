"""Packing vs padding on a LLaVA-665K-shaped length mix, and what prefetching hides.

The demo's model (SmolLM2-135M + a demo-sized random CLIP tower, the uniform 25%
region, fp32) trains at `--max-length` on the mix of tools/llava_mix.py three ways:
every row padded to max_length, padded to the smallest fitting bucket, and packed
(data.packing). For each: real (non-padding) and supervised tokens per second of
step time and the padding fraction, as ratios to pad-to-max, all in one run. Then
the packed run's wall time per step with the batch built in the loop (prefetch 0)
and prefetched (2), against the compute-only step time; and the MFU (the model FLOPs
the training logs count, train/flops.py, over the peak they use) of the region step
beside a full fine-tune step on the same packed batches, the two alternating batch
by batch.

Usage: python tools/bench_packing.py [--samples 600] [--steps 4] [--batch 4] [--max-length 512]
Run on an idle machine: the bench reports the cores other processes used meanwhile.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

from bench_jax_step import Variant, decoder_loaded_once, demo_config, write_random_tower
from bench_load import OtherLoad
from bench_measure import header
from llava_mix import write_mix

BUCKETS = (128, 256, 384, 512)
TOWER_IMAGE = 48


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--samples", type=int, default=600, help="samples of the synthetic mix")
  parser.add_argument("--steps", type=int, default=4, help="timed steps per layout")
  parser.add_argument("--batch", type=int, default=4, help="rows per batch")
  parser.add_argument("--max-length", type=int, default=512)
  return parser.parse_args(argv)


def layout_config(workdir: str, tower_dir: str, args, **data):
  config = demo_config(workdir, tower_dir, strategy="uniform", fraction=0.25, lora_rank=0)
  with config.unlocked():
    config.data.train_json = os.path.join(workdir, "mix", "train.json")
    config.data.image_root = os.path.join(workdir, "mix")
    config.data.max_length = args.max_length
    config.data.buckets = ()
    config.data.num_workers = 0
    config.train.batch_size = args.batch
    for key, value in data.items():
      config.data[key] = value
  return config


def batches(config, variant, count: int) -> list:
  """`count` host batches of this layout, from the pipeline train.run uses."""
  from visregion_jax.convert import load_tokenizer  # pylint: disable=import-outside-toplevel
  from visregion_jax.data import pipeline, skip  # pylint: disable=import-outside-toplevel
  from visregion_jax.data.from_config import data_config_for, open_source  # pylint: disable=import-outside-toplevel
  from visregion_jax.models.lvlm import abstract_lvlm  # pylint: disable=import-outside-toplevel
  tokenizer = load_tokenizer(variant.model_config.source)
  data_config = data_config_for(config, abstract_lvlm(variant.model_config), tokenizer, config.model.vision_tower)
  it = iter(pipeline.make_batches(open_source(config.data, "train"), tokenizer, data_config,
                                  counter=skip.SkipCounter()))
  return [next(it) for _ in range(count)]


def device_arrays(variant, batch: dict) -> dict:
  from visregion_jax.train.prefetch import split_host  # pylint: disable=import-outside-toplevel
  return variant.device_batch(split_host(batch)[1])


def measure_layout(variant, host: list) -> dict:
  """Step seconds and token counts over the batches (every shape compiled first)."""
  placed = [device_arrays(variant, b) for b in host]
  for b in placed:
    variant.compile(b)
  variant.step(placed[0])
  times = []
  for b in placed[1:]:
    t0 = time.perf_counter()
    variant.step(b)
    times.append(time.perf_counter() - t0)
  real = sum(int(b["attention_mask"].sum()) for b in host[1:])
  supervised = sum(int((b["labels"][:, 1:] != -100).sum()) for b in host[1:])
  cells = sum(b["input_ids"].size for b in host[1:])
  return {"seconds": sum(times), "step": statistics.median(times), "real": real, "supervised": supervised,
          "padding": 1 - real / cells, "samples": sum(_samples(b) for b in host[1:])}


def _samples(batch: dict) -> int:
  if "segment_ids" in batch:
    return int(batch["segment_ids"].max(axis=1).sum())
  return int((batch["index"] >= 0).sum())


def peak():
  from visregion_jax.train.peak_flops import device_peak  # pylint: disable=import-outside-toplevel
  return device_peak()


def full_variant(workdir: str, tower_dir: str, args):
  config = demo_config(workdir, tower_dir, strategy="full", lora_rank=0)
  with config.unlocked():
    config.data.max_length = args.max_length
    config.train.batch_size = args.batch
  return Variant("full", config, workdir)


def step_mfu(variants: dict, host: list) -> dict:
  """{name: model FLOPs per second of step time over the peak} on these batches. The
  variants alternate batch by batch, so that the machine's drift hits them alike."""
  placed = {name: [device_arrays(v, b) for b in host] for name, v in variants.items()}
  seconds = dict.fromkeys(variants, 0.0)
  for name, v in variants.items():
    v.step(placed[name][0])
  for i in range(1, len(host)):
    for name, v in variants.items():
      t0 = time.perf_counter()
      v.step(placed[name][i])
      seconds[name] += time.perf_counter() - t0
  return {name: sum(v.flops(b) for b in host[1:]) / seconds[name] / peak().flops_per_sec
          for name, v in variants.items()}


def wall_per_step(config, variant, steps: int, depth: int) -> float:
  """Median wall seconds per step with batches built in the loop or prefetched."""
  from visregion_jax.convert import load_tokenizer  # pylint: disable=import-outside-toplevel
  from visregion_jax.data import pipeline, skip  # pylint: disable=import-outside-toplevel
  from visregion_jax.data.from_config import data_config_for, open_source  # pylint: disable=import-outside-toplevel
  from visregion_jax.models.lvlm import abstract_lvlm  # pylint: disable=import-outside-toplevel
  from visregion_jax.train.prefetch import Prefetcher  # pylint: disable=import-outside-toplevel
  tokenizer = load_tokenizer(variant.model_config.source)
  data_config = data_config_for(config, abstract_lvlm(variant.model_config), tokenizer, config.model.vision_tower)
  source = open_source(config.data, "train")
  prefetcher = Prefetcher(iter(pipeline.make_batches(source, tokenizer, data_config, counter=skip.SkipCounter())),
                          variant.device_batch, depth)
  try:
    variant.step(next(prefetcher)[2])
    times = []
    for _ in range(steps):
      t0 = time.perf_counter()
      variant.step(next(prefetcher)[2])
      times.append(time.perf_counter() - t0)
  finally:
    prefetcher.close()
  return statistics.median(times)


def main(argv=None) -> int:
  args = parse_args(argv)
  header()
  workdir = tempfile.mkdtemp(prefix="bench_packing_")
  counts = write_mix(os.path.join(workdir, "mix"), args.samples, args.max_length, TOWER_IMAGE)
  print(f"mix of {args.samples} samples: {dict(sorted(counts.items()))}")
  tower_dir = write_random_tower(os.path.join(workdir, "tower"))
  layouts = {"pad to max_length": {}, "buckets": {"buckets": BUCKETS}, "packing": {"packing": True}}
  results = {}
  with decoder_loaded_once(), OtherLoad() as load:
    base = layout_config(workdir, tower_dir, args)
    variant = Variant("region", base, workdir)
    for name, data in layouts.items():
      config = layout_config(workdir, tower_dir, args, **data)
      results[name] = measure_layout(variant, batches(config, variant, args.steps + 1))
      r = results[name]
      print(f"{name:18s} step {r['step']:.2f} s  real {r['real'] / r['seconds']:7.1f} tok/s  supervised "
            f"{r['supervised'] / r['seconds']:6.1f} tok/s  padding {r['padding']:.0%}  "
            f"{r['samples'] / args.steps:.1f} samples/step")
    packed = layout_config(workdir, tower_dir, args, packing=True)
    compute = results["packing"]["step"]
    walls = {depth: wall_per_step(packed, variant, args.steps, depth) for depth in (0, 2)}
    packed_batches = batches(packed, variant, args.steps + 1)
    mfu = step_mfu({"region": variant, "full": full_variant(workdir, tower_dir, args)}, packed_batches)
  ref = results["pad to max_length"]
  print("\nratios to pad-to-max (real tok/s, supervised tok/s):")
  for name, r in results.items():
    print(f"  {name:18s} {r['real'] / r['seconds'] / (ref['real'] / ref['seconds']):.2f}x  "
          f"{r['supervised'] / r['seconds'] / (ref['supervised'] / ref['seconds']):.2f}x")
  b, p = results["buckets"], results["packing"]
  print(f"packing vs buckets, supervised tok/s: {p['supervised'] / p['seconds'] / (b['supervised'] / b['seconds']):.2f}x")
  print(f"packed step wall time: built in the loop {walls[0]:.2f} s ({walls[0] / compute:.2f}x compute), "
        f"prefetched {walls[2]:.2f} s ({walls[2] / compute:.2f}x compute {compute:.2f} s)")
  print(f"MFU on packed batches: region {mfu['region']:.1%}, full fine-tune {mfu['full']:.1%} "
        f"(region / full {mfu['region'] / mfu['full']:.3f}x; peak {peak().flops_per_sec / 1e9:.1f} GFLOP/s per device)")
  print(f"other processes used {load.cores:.2f} cores meanwhile"
        + ("  (> 0.1: rerun on an idle machine)" if load.cores > 0.1 else ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())
