"""Benchmark: the JAX SmolLM2-135M against transformers on this CPU, as ratios.

Measures, in one run:
  1. prefill throughput (logits for every token, tokens/s), JAX jit vs PyTorch eager;
  2. greedy decode throughput (new tokens/s), `visregion_jax.generate` vs `hf.generate`;
  3. conversion memory: the peak RSS above the post-import baseline of `from_hf` and of
     the `from-hf` CLI path (`from_hf` + `jax_checkpoint.write_model`), each in a fresh
     subprocess, divided by the fp32 safetensors checkpoint size (goal: <= 1.5x).

Absolute numbers depend on the machine, so the script reports ratios measured in the
same run: JAX and PyTorch time the same inputs with the same cores, alternating, so
the machine's speed cancels; memory is relative to the checkpoint size for the same
reason. Rates use the best of N runs, since other processes only ever add time. On a
shared machine they still skew the ratio (PyTorch's OpenMP threads suffer far more
from a busy core than XLA's pool), so each timed section also prints how many cores
other processes used meanwhile. A script, not a test: it asserts nothing.

  .venv/bin/python tools/bench_forward.py [--help]
"""

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

from bench_load import OtherLoad, cpu_model

MODEL = "smollm2-135m-instruct"
RSS_GOAL = 1.5
_BUSY_WARN = 0.25  # cores used by other processes above which timings are suspect
_CHILD_FLAG = "--_rss-child"  # hidden: run one conversion and print its memory as JSON


def _status_kib() -> dict:
  """VmRSS / RssAnon / RssFile / VmHWM of this process in KiB, from /proc/self/status."""
  out = {}
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      key, _, rest = line.partition(":")
      if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
        out[key] = int(rest.split()[0])
  return out


class _PeakSampler:
  """Polls /proc/self/status to split the peak into anonymous and file-mapped memory.

  VmHWM gives only the total high-water mark; whether the excess is our own copies
  (anon) or mmapped checkpoint pages (file) decides what a fix would look like.
  """

  def __init__(self, interval_s: float = 0.002):
    self.interval_s = interval_s
    self.peak = {"RssAnon": 0, "RssFile": 0}
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    while not self._stop.is_set():
      for key, value in _status_kib().items():
        if key in self.peak:
          self.peak[key] = max(self.peak[key], value)
      time.sleep(self.interval_s)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


def _rss_child(mode: str, src: str, dst: str) -> None:
  """Runs one conversion in this fresh process; prints its memory numbers as JSON.

  The peak is VmHWM, not ru_maxrss: Linux carries the pre-exec image's high-water mark
  into ru_maxrss across exec, so a child of this multi-GB benchmark would report the
  parent's RSS. VmHWM belongs to the new address space only.
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from visregion_jax import convert  # pylint: disable=import-outside-toplevel
  from visregion_jax.convert import jax_checkpoint  # pylint: disable=import-outside-toplevel
  jnp.zeros(1).block_until_ready()  # the CPU client's own memory is not conversion memory
  base = _status_kib()
  t0 = time.perf_counter()
  with _PeakSampler() as sampler:
    model = convert.from_hf(src)
    loaded = _status_kib()
    if mode == "cli":
      jax_checkpoint.write_model(model, dst)
  print(json.dumps({"base": base, "loaded": loaded, "end": _status_kib(),
                    "seconds": time.perf_counter() - t0, "sampled_peak": sampler.peak}))


def _run_child(mode: str, src: str, dst: str) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), _CHILD_FLAG, mode, src, dst]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"{mode} child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _time_interleaved(fns: tuple, repeats: int) -> tuple:
  """(seconds per call of each function, cores used by others), alternating A, B, A, B.

  Alternating spreads a burst of load from another process over both sides.
  """
  times = [[] for _ in fns]
  with OtherLoad() as load:
    for _ in range(repeats):
      for fn, out in zip(fns, times):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
  return times, load.cores


def _report(name: str, detail: str, unit: str, count: int, times: tuple, others: float,
            rows: list) -> None:
  jax_rate, torch_rate = (count / min(t) for t in times)  # other load only ever adds time
  title = f"\n{name} ({detail})"
  print(f"{title}; other processes used {others:.2f} cores meanwhile")
  for side, rate, t in (("JAX", jax_rate, times[0]), ("torch", torch_rate, times[1])):
    print(f"  {side:6s} {rate:9.1f} {unit}  times (s) {[round(x, 3) for x in t]}")
  print(f"  JAX/torch = {jax_rate / torch_rate:.2f}")
  rows.append((name, unit, jax_rate, torch_rate, others))


def bench_prefill(model, hf, args, rng, rows: list) -> None:
  """Logits for every position: the scoring / training-shaped forward pass."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  ids = rng.randint(0, model.config.vocab_size, size=(args.prefill_batch, args.prefill_len))
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids))
  jax_ids, torch_ids = jax.numpy.asarray(ids, jax.numpy.int32), torch.from_numpy(ids)
  t0 = time.perf_counter()
  jax_logits = np.asarray(forward(state, jax_ids).block_until_ready())
  compile_s = time.perf_counter() - t0
  with torch.inference_mode():
    diff = float(np.max(np.abs(jax_logits - hf(torch_ids).logits.numpy())))  # + torch warm-up
    del jax_logits
    times, others = _time_interleaved(
        (lambda: forward(state, jax_ids).block_until_ready(), lambda: hf(torch_ids).logits),
        args.prefill_repeats)
  _report(f"prefill {args.prefill_batch}x{args.prefill_len}",
          f"best of {args.prefill_repeats}; JAX first call {compile_s:.1f} s; "
          f"max |logit diff| {diff:.1e}", "tok/s", ids.size, times, others, rows)


def bench_decode(model, hf, args, rng, rows: list) -> None:
  """Greedy KV-cached generation of exactly `new_tokens` per sample (no EOS stop)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  from visregion_jax import generate  # pylint: disable=import-outside-toplevel
  k = args.new_tokens
  prompts = rng.randint(0, model.config.vocab_size, size=(args.decode_batch, args.prompt_len))
  run_jax = lambda: generate.generate(model, prompts, max_new_tokens=k, eos_token_ids=[])
  t0 = time.perf_counter()
  jax_tokens = run_jax()
  compile_s = time.perf_counter() - t0
  torch_prompts = torch.from_numpy(prompts)
  kwargs = dict(attention_mask=torch.ones_like(torch_prompts), do_sample=False,
                max_new_tokens=k, min_new_tokens=k, pad_token_id=model.config.pad_token_id or 0)
  with torch.inference_mode():
    hf_tokens = hf.generate(torch_prompts, **kwargs)[:, args.prompt_len:].numpy()  # + warm-up
    times, others = _time_interleaved((run_jax, lambda: hf.generate(torch_prompts, **kwargs)),
                                      args.decode_repeats)
  _report(f"decode {args.decode_batch}x({args.prompt_len}+{k})",
          f"greedy, best of {args.decode_repeats}; JAX first call {compile_s:.1f} s; "
          f"tokens equal to HF's {np.mean(jax_tokens == hf_tokens):.0%}", "new tok/s",
          prompts.shape[0] * k, times, others, rows)


def bench_conversion_rss(model) -> list:
  """[(label, peak RSS over baseline / checkpoint bytes)] for a fresh-process import."""
  from visregion_jax import convert  # pylint: disable=import-outside-toplevel
  mib = lambda kib: f"{kib / 1024:.0f} MiB"
  out = []
  with tempfile.TemporaryDirectory() as tmp:
    hf_dir = os.path.join(tmp, "hf")
    convert.to_hf(model, hf_dir)
    size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(hf_dir, "*.safetensors")))
    print(f"\nconversion memory: {size / 2 ** 20:.1f} MiB of {model.config.param_dtype} "
          "safetensors; each in a fresh process, baseline = VmRSS after imports and JAX start")
    for mode, label in (("from_hf", "convert.from_hf(dir)"), ("cli", "from-hf CLI (+save_model)")):
      r = _run_child(mode, hf_dir, os.path.join(tmp, f"jax_{mode}"))
      base, loaded, end, peak = r["base"], r["loaded"], r["end"], r["sampled_peak"]
      ratio = (end["VmHWM"] - base["VmRSS"]) * 1024 / size
      print(f"  {label}: {r['seconds']:.1f} s; baseline {mib(base['VmRSS'])}, peak VmHWM "
            f"{mib(end['VmHWM'])}, +{mib(end['VmHWM'] - base['VmRSS'])} = {ratio:.2f}x checkpoint "
            f"(goal <= {RSS_GOAL}x: {'ok' if ratio <= RSS_GOAL else 'OVER'})")
      print(f"    sampled peaks over baseline: anon +{mib(peak['RssAnon'] - base['RssAnon'])}, "
            f"file-mapped +{mib(peak['RssFile'] - base['RssFile'])}; right after from_hf: anon "
            f"+{mib(loaded['RssAnon'] - base['RssAnon'])}, file-mapped "
            f"+{mib(loaded['RssFile'] - base['RssFile'])}")
      out.append((label, ratio))
  return out


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description="JAX vs PyTorch throughput ratios, and conversion peak RSS / checkpoint size, "
                  "for SmolLM2-135M-Instruct in float32 on this CPU.")
  parser.add_argument("--prefill-batch", type=int, default=4)
  parser.add_argument("--prefill-len", type=int, default=256, help="tokens per prefill sample")
  parser.add_argument("--prefill-repeats", type=int, default=3)
  parser.add_argument("--decode-batch", type=int, default=4)
  parser.add_argument("--prompt-len", type=int, default=64, help="tokens per decode prompt")
  parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens per sample")
  parser.add_argument("--decode-repeats", type=int, default=3)
  parser.add_argument("--threads", type=int, default=os.cpu_count(),
                      help="torch intra-op threads (XLA uses every core)")
  parser.add_argument("--skip-rss", action="store_true", help="skip the conversion-memory part")
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  from visregion_jax import convert  # pylint: disable=import-outside-toplevel
  from visregion_jax.convert import gguf_file  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(args.threads)
  print(f"machine: {os.cpu_count()} CPUs, {cpu_model()} ({platform.machine()}); "
        f"torch threads {torch.get_num_threads()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"versions: python {platform.python_version()}, jax {jax.__version__} "
        f"({jax.default_backend()}), torch {torch.__version__}, "
        f"transformers {transformers.__version__}")
  t0 = time.perf_counter()
  model = convert.from_hf(MODEL)
  jax_load_s = time.perf_counter() - t0
  path = gguf_file.resolve_model_path(MODEL)
  t0 = time.perf_counter()
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  print(f"loaded {os.path.basename(path)}: JAX {jax_load_s:.1f} s, torch "
        f"{time.perf_counter() - t0:.1f} s; params {model.config.param_dtype}, "
        f"compute {model.config.dtype}")

  rng, rows = np.random.RandomState(args.seed), []
  bench_prefill(model, hf, args, rng, rows)
  bench_decode(model, hf, args, rng, rows)
  del hf
  mem_rows = [] if args.skip_rss else bench_conversion_rss(model)

  print("\n" + "=" * 72)
  print(f"{'measure':20s} {'unit':10s} {'JAX':>8s} {'torch':>8s} {'ratio':>6s}  others' cores")
  for name, unit, j, t, others in rows:
    print(f"{name:20s} {unit:10s} {j:8.1f} {t:8.1f} {j / t:6.2f}  {others:.2f}")
  for label, ratio in mem_rows:
    print(f"{'peak RSS/ckpt size':20s} {label:28s} {ratio:6.2f}  goal <= {RSS_GOAL}")
  print("=" * 72)
  if any(others > _BUSY_WARN for *_, others in rows):
    print(f"WARNING: other processes used > {_BUSY_WARN} cores during timing; torch's OpenMP "
          "threads slow down far more than XLA's under contention, so the ratios overstate JAX. "
          "Re-run on an idle machine (or compare with --threads 1).")
  return 0


if __name__ == "__main__":
  if len(sys.argv) == 5 and sys.argv[1] == _CHILD_FLAG:
    _rss_child(*sys.argv[2:])
    sys.exit(0)
  sys.exit(main())
