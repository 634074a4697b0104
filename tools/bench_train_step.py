"""Benchmark: one visual-region training step of SmolLM2-135M + a small CLIP tower, on this CPU.

Measures, in one run, the jitted step of `train.step.make_train_step` exactly as
`train.loop.run` builds it (the demo config, `builder.build_model`, `nnx.split` by
the region labeler, `optim.make_optimizer`, donation), with image inputs (an LVLM
of SmolLM2-135M-Instruct and a random demo-sized CLIP tower written with
transformers: 48 px images, 8 px patches -> 36 image tokens), on a fixed batch of
8 x 128 real tokens in float32, for four trainable sets:

  full        strategy "full", lora_rank 0: all 30 decoder layers + projector
  region      strategy "uniform" 25% (8 layers), lora_rank 0: the demo's recipe
  region-lora strategy "uniform" 25%, LoRA r=128 alpha 256 (dropout 0.05, base's)
  projector   strategy "none": the projector alone

and, beside them, the same full fine-tune and region step in PyTorch: transformers'
LlavaForConditionalGeneration loaded from the JAX model's own HF export, the same
batch (ids, images, mask, labels), the tower frozen, `requires_grad` on the projector
and all / the 8 region layers, AdamW + clipping (bench_torch_step.py).
PyTorch runs once per `--torch-threads` count (default 1 and all cores): its OpenMP
threads stall whenever another process holds a core, so on a shared machine one
thread can be several times faster than two; the ratio is taken against the faster.
For each: wall and CPU seconds per step and tokens/s (best of N; the variants,
PyTorch and the matmul reference alternate round by round so a burst of load from
another process hits all of them), optimizer state bytes, peak memory (XLA's buffer
assignment of the compiled step, since `device.memory_stats()` is None on CPU; and
the process's RSS high-water growth during a step, reset through
/proc/self/clear_refs), and achieved FLOP/s against a dense fp32 `jnp.dot` of the
same run (the machine's practical peak), compared per CPU-second so that cores
taken by other processes cancel out.

Why ratios: the absolute speed of a shared 2-core VM means little, so the goals are
ratios of runs in this process: region/full step time (goal <= 0.55), region/full
optimizer state (goal <= 0.30), JAX/PyTorch full-fine-tune tokens/s (goal >= 1.0),
JAX/PyTorch region step time (goal <= 1.0), region LoRA/full step time (goal <= 0.85).
The FLOP column says how far the step-time goal is reachable at all: the projector
sits below every decoder layer, so the backward pass must carry activation
gradients through all 30 layers whatever the region is; only the weight gradients
(1/3 of a layer's matmul work) and the optimizer shrink with the region.

A script, not a test: it asserts nothing. Its parts: bench_jax_step.py (the demo's model
and step, FLOPs), bench_torch_step.py (the PyTorch reference), bench_measure.py
(timers, the matmul peak) and bench_train_report.py (the table and goals); the first
two are shared with bench_data.py.

`--profile` then profiles a few more steps of each variant and PyTorch run
(bench_profile.py) and prints where the time goes: the top ops by self time, with
the traces kept under `--profile-dir` (BUILD.md, "Profiling the step", says how to
read them). `--layers N` keeps the decoder's first N layers: the same code paths in
seconds, for tests of the benchmark itself (its timings then mean nothing).

  .venv/bin/python tools/bench_train_step.py [--help]
  .venv/bin/python tools/bench_train_step.py --profile --repeats 1
"""

import argparse
import os
import sys
import tempfile
import time

import bench_train_report as report
from bench_jax_step import TOWER, Variant, decoder_loaded_once, demo_config, synthetic_batch, write_random_tower
from bench_load import OtherLoad
from bench_measure import DenseMatmul, Timed, header
from bench_profile import jax_profile, torch_profile
from bench_torch_step import TorchFineTune

os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF and shard progress bars

VARIANTS = {
    "full": dict(strategy="full", lora_rank=0),
    "region": dict(strategy="uniform", fraction=0.25, lora_rank=0),
    "region-lora": dict(strategy="uniform", fraction=0.25),   # rank / alpha from --lora-*
    "projector": dict(strategy="none", lora_rank=0),
}


def build_variants(names, root: str, tower_dir: str, args) -> dict:
  """{name: Variant}; inside `decoder_loaded_once`, which the caller holds."""
  out = {}
  for name in names:
    region = dict(VARIANTS[name])
    if name == "region-lora":
      region.update(lora_rank=args.lora_rank, lora_alpha=args.lora_alpha)
    t0 = time.perf_counter()
    out[name] = Variant(name, demo_config(os.path.join(root, name), tower_dir, **region),
                        os.path.join(root, name))
    out[name].build_s = time.perf_counter() - t0
  return out


def export_reference(root: str, tower_dir: str) -> str:
  """The LVLM the variants start from (SmolLM2, the tower, the projector of config.seed)
  as `convert.to_hf` exports it: what the PyTorch reference loads. Inside
  `decoder_loaded_once`, which the caller holds."""
  from visregion_jax.convert import to_hf  # pylint: disable=import-outside-toplevel
  from visregion_jax.train.builder import build_model  # pylint: disable=import-outside-toplevel
  workdir = os.path.join(root, "torch")
  model, _ = build_model(demo_config(workdir, tower_dir, strategy="full", lora_rank=0), workdir)
  return to_hf(model, os.path.join(workdir, "hf"))


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description="Visual-region train-step speed and memory on SmolLM2-135M + a small CLIP tower "
                  "(fp32, this CPU): full FT vs region vs region LoRA vs projector only, and "
                  "JAX vs PyTorch full FT, as ratios measured in one run.")
  parser.add_argument("--batch", type=int, default=8, help="samples per step")
  parser.add_argument("--length", type=int, default=128, help="tokens per sample (36 are image tokens)")
  parser.add_argument("--repeats", type=int, default=3, help="timed rounds (each runs every variant once)")
  parser.add_argument("--lora-rank", type=int, default=128)
  parser.add_argument("--lora-alpha", type=float, default=256.0)
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help=f"comma-separated subset of {','.join(VARIANTS)}")
  parser.add_argument("--skip-torch", action="store_true", help="skip the PyTorch reference")
  parser.add_argument("--torch-threads", default=f"1,{os.cpu_count()}",
                      help="comma-separated torch intra-op thread counts, each timed as its own row "
                           "(OpenMP threads stall when another process takes a core, so one "
                           "thread can beat two on a busy machine); the ratio uses the fastest")
  parser.add_argument("--torch-foreach", type=int, default=1, choices=(0, 1),
                      help="torch AdamW multi-tensor (foreach) implementation")
  parser.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n fp32 peak reference")
  parser.add_argument("--layers", type=int, default=0,
                      help="keep the decoder's first N layers (0: all 30); a fast run of the code paths "
                           "whose timings mean nothing")
  parser.add_argument("--profile", action="store_true",
                      help="after the timed rounds, profile each variant and PyTorch run and print its top "
                           "ops by self time (jax.profiler / torch.profiler traces kept under --profile-dir)")
  parser.add_argument("--profile-dir", default="bench_profile",
                      help="where the traces go, one folder per variant (default: ./bench_profile)")
  parser.add_argument("--profile-steps", type=int, default=3, help="steps per profile")
  parser.add_argument("--profile-top", type=int, default=15, help="ops per profile table")
  return parser.parse_args(argv)


def check_args(args) -> tuple:
  """(variant names, torch thread counts) of the command line; exits on what cannot run."""
  names = [n for n in args.variants.split(",") if n]
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    raise SystemExit(f"unknown variants {unknown}; expected some of {list(VARIANTS)}")
  if args.length < 36 + 16:
    raise SystemExit(f"--length {args.length}: expected at least 52 (36 image tokens + text)")
  if args.layers < 0 or args.profile_steps < 1:
    raise SystemExit("expected --layers >= 0 and --profile-steps >= 1")
  return names, [] if args.skip_torch else [int(t) for t in args.torch_threads.split(",") if t]


def warm_up(variants: dict, np_batch: dict) -> None:
  """Compiles and runs each variant once, so that the timed rounds hold no compile or first-run cost."""
  for v in variants.values():
    v.batch = v.device_batch(np_batch)
    _, compile_s = v.compile(v.batch)
    t0 = time.perf_counter()
    loss = float(v.step(v.batch)["loss"])
    depth = v.model_config.text.num_layers
    print(f"  {v.name:12s} layers {list(v.layers) if len(v.layers) < depth else f'all {depth}'}; trainable "
          f"{v.trainable_params / 1e6:6.2f} M; build {v.build_s:5.1f} s, compile {compile_s:5.1f} s, "
          f"first step {time.perf_counter() - t0:5.1f} s, loss {loss:.3f}")


def warm_up_torch(first: Variant, hf_dir: str, np_batch: dict, args, torch_threads: list) -> dict:
  """The PyTorch full and region fine-tunes ({kind: run}) of the export `hf_dir`, loaded
  and stepped once; {} without threads."""
  if not torch_threads:
    return {}
  import torch  # pylint: disable=import-outside-toplevel

  from visregion_jax.region import select_layers  # pylint: disable=import-outside-toplevel
  region_layers = select_layers(first.model_config.text.num_layers, 0.25, "uniform")
  default_threads = torch.get_num_threads()
  torch_runs = {}
  for kind, layers in (("full", None), ("region", region_layers)):
    run = torch_runs[kind] = TorchFineTune(hf_dir, first.config.train, bool(args.torch_foreach), layers)
    run.set_batch(np_batch)
    t0 = time.perf_counter()
    loss = run.step(max(torch_threads))
    print(f"  {'torch ' + kind:12s} torch {torch.__version__}, attention {run.attn}, AdamW "
          f"foreach={bool(args.torch_foreach)}, threads {torch_threads} per row (torch.set_num_threads; "
          f"its default here {default_threads}); load {run.load_s:.1f} s, first step "
          f"{time.perf_counter() - t0:5.1f} s, loss {loss:.3f}")
  return torch_runs


def time_rounds(variants: dict, torch_runs: dict, torch_threads: list, matmul: DenseMatmul,
                repeats: int) -> tuple:
  """({name: Timed}, cores other processes used meanwhile) over `repeats` rounds.

  Every round runs the matmul, each variant and each PyTorch run once, so that a
  burst of load from another process hits all of them alike.
  """
  timers = {name: Timed(name) for name in variants}
  timers.update({f"torch {k} {n}t": Timed(f"torch {k} {n}t") for k in torch_runs for n in torch_threads})
  with OtherLoad() as load:
    for _ in range(repeats):
      matmul.run(3)
      for name, v in variants.items():
        timers[name].run(lambda v=v: v.step(v.batch))
      for kind, run in torch_runs.items():
        for n in torch_threads:
          timers[f"torch {kind} {n}t"].run(lambda n=n, run=run: run.step(n))
    matmul.run(3)
  return timers, load.cores


def profile_all(variants: dict, torch_runs: dict, torch_threads: list, timers: dict, args) -> list:
  """A Profile of each variant and each PyTorch run (at its fastest thread count), in the
  order of the table; each under its own folder of --profile-dir."""
  profiles = []
  for name, v in variants.items():
    hlo_text = v.compile(v.batch)[0].as_text()
    profiles.append(jax_profile(f"{name} (JAX)", lambda v=v: v.step(v.batch), args.profile_steps,
                                os.path.join(args.profile_dir, name), hlo_text))
  for kind, run in torch_runs.items():
    n = min(torch_threads, key=lambda n, kind=kind: timers[f"torch {kind} {n}t"].best)
    profiles.append(torch_profile(f"torch {kind} {n}t (PyTorch, torch.set_num_threads({n}))",
                                  lambda n=n, run=run: run.step(n),
                                  args.profile_steps, os.path.join(args.profile_dir, f"torch-{kind}")))
  return profiles


def main(argv=None) -> int:
  args = parse_args(argv)
  names, torch_threads = check_args(args)
  header()
  with tempfile.TemporaryDirectory(prefix="bench_train_step_") as root:
    tower_dir = write_random_tower(os.path.join(root, "tower"))
    t0 = time.perf_counter()
    with decoder_loaded_once(args.layers):
      variants = build_variants(names, root, tower_dir, args)
      hf_dir = export_reference(root, tower_dir) if torch_threads else None
    print(f"built {len(variants)} variants in {time.perf_counter() - t0:.1f} s "
          f"(SmolLM2 loaded once; tower {TOWER}); compiling and running each once (warm-up):")
    first = next(iter(variants.values()))
    np_batch = synthetic_batch(first.model_config, args.batch, args.length)
    tokens = args.batch * args.length
    warm_up(variants, np_batch)
    torch_runs = warm_up_torch(first, hf_dir, np_batch, args, torch_threads)
    matmul = DenseMatmul(args.matmul_size)
    timers, others = time_rounds(variants, torch_runs, torch_threads, matmul, args.repeats)
    report.print_matmul(matmul, args, others)
    rows = report.result_rows(variants, torch_runs, torch_threads, timers, args)
    report.print_table(rows, tokens, matmul, args)
    report.print_footnotes(first, tokens, args, others)
    if args.profile:
      for profile in profile_all(variants, torch_runs, torch_threads, timers, args):
        report.print_profile(profile, args.profile_top)
  return 0


if __name__ == "__main__":
  sys.exit(main())
