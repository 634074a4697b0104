"""Benchmark: the JAX SmolLM2-135M against transformers on this CPU, as ratios.

Measures, in one process and one run:
  1. prefill throughput (full-sequence logits, tokens/s), JAX jit vs PyTorch eager;
  2. greedy decode throughput (new tokens/s), `visregion_jax.generate` vs `hf.generate`;
  3. conversion memory: the peak RSS above the post-import baseline of `from_hf` and of
     the `from-hf` CLI path (`from_hf` + `jax_checkpoint.save_model`), each in a fresh
     subprocess, divided by the fp32 safetensors checkpoint size (goal: <= 1.5x).

Absolute numbers depend on the machine; JAX and PyTorch run back to back on the same
inputs and thread count, so their ratio is what carries over between machines. The
memory ratio is relative to the checkpoint size for the same reason. This is a script,
not a test: it asserts nothing and prints a table.

  .venv/bin/python tools/bench_forward.py [--help]
"""

import argparse
import glob
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MODEL = "smollm2-135m-instruct"
RSS_GOAL = 1.5
_CHILD_FLAG = "--_rss-child"


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

  ru_maxrss gives only the total high-water mark; whether the excess is our copies
  (anon) or mmapped checkpoint pages (file) decides what a fix would look like.
  """

  def __init__(self, interval_s: float = 0.002):
    self.interval_s = interval_s
    self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    while not self._stop.is_set():
      for k, v in _status_kib().items():
        if k in self.peak:
          self.peak[k] = max(self.peak[k], v)
      time.sleep(self.interval_s)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


def _rss_child(mode: str, src: str, dst: str) -> None:
  """Runs one conversion in this fresh process; prints its memory numbers as JSON."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from visregion_jax import convert  # pylint: disable=import-outside-toplevel
  from visregion_jax.convert import jax_checkpoint  # pylint: disable=import-outside-toplevel
  jnp.zeros(1).block_until_ready()  # the CPU client's own memory is not conversion memory
  del jax
  base = _status_kib()
  base_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  t0 = time.perf_counter()
  with _PeakSampler() as sampler:
    model = convert.from_hf(src)
    if mode == "cli":
      jax_checkpoint.save_model(model, dst)
  seconds = time.perf_counter() - t0
  print(json.dumps({"base": base, "base_maxrss": base_maxrss, "seconds": seconds,
                    "peak_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                    "sampled_peak": sampler.peak, "end": _status_kib()}))


def _run_child(mode: str, src: str, dst: str) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), _CHILD_FLAG, mode, src, dst]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"{mode} child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _time(fn, repeats: int) -> list:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description="JAX vs PyTorch throughput ratios and conversion peak RSS / checkpoint size "
                  "for SmolLM2-135M-Instruct (fp32, CPU).")
  parser.add_argument("--prefill-batch", type=int, default=4)
  parser.add_argument("--prefill-len", type=int, default=256, help="tokens per prefill sample")
  parser.add_argument("--prefill-repeats", type=int, default=3)
  parser.add_argument("--decode-batch", type=int, default=4)
  parser.add_argument("--prompt-len", type=int, default=64, help="tokens per decode prompt")
  parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens generated per sample")
  parser.add_argument("--decode-repeats", type=int, default=2)
  parser.add_argument("--threads", type=int, default=os.cpu_count(),
                      help="torch intra-op threads (XLA uses all cores by default)")
  parser.add_argument("--skip-rss", action="store_true", help="skip the conversion-memory part")
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from visregion_jax import convert  # pylint: disable=import-outside-toplevel
  from visregion_jax import generate as vgen  # pylint: disable=import-outside-toplevel
  from visregion_jax.convert.gguf_file import resolve_model_path  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(args.threads)
  print(f"machine: {os.cpu_count()} CPUs, {_cpu_model()!r} ({platform.machine()}), "
        f"torch threads {torch.get_num_threads()}")
  print(f"versions: python {platform.python_version()}, jax {jax.__version__} "
        f"({jax.default_backend()}, {len(jax.devices())} device), torch {torch.__version__}, "
        f"transformers {transformers.__version__}")
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")

  t0 = time.perf_counter()
  model = convert.from_hf(MODEL)
  jax_load_s = time.perf_counter() - t0
  path = resolve_model_path(MODEL)
  t0 = time.perf_counter()
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  hf_load_s = time.perf_counter() - t0
  print(f"loaded {os.path.basename(path)}: JAX {jax_load_s:.1f} s, PyTorch {hf_load_s:.1f} s; "
        f"param dtype {model.config.param_dtype}, compute {model.config.dtype}")
  vocab = model.config.vocab_size
  rng = np.random.RandomState(args.seed)
  rows = []

  # Prefill: full-sequence logits, as a scoring / training-shaped forward pass.
  ids = rng.randint(0, vocab, size=(args.prefill_batch, args.prefill_len)).astype(np.int32)
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids))
  jax_ids = jax.numpy.asarray(ids)
  t0 = time.perf_counter()
  jax_logits = forward(state, jax_ids).block_until_ready()
  compile_s = time.perf_counter() - t0
  jax_times = _time(lambda: forward(state, jax_ids).block_until_ready(), args.prefill_repeats)
  torch_ids = torch.from_numpy(ids.astype(np.int64))
  with torch.inference_mode():
    torch_logits = hf(torch_ids).logits  # warm-up (allocator, kernels) and parity check
    torch_times = _time(lambda: hf(torch_ids).logits, args.prefill_repeats)
  diff = float(np.max(np.abs(np.asarray(jax_logits) - torch_logits.numpy())))
  del jax_logits, torch_logits
  n_tok = ids.size
  jax_tps = n_tok / statistics.median(jax_times)
  torch_tps = n_tok / statistics.median(torch_times)
  print(f"\nprefill {args.prefill_batch}x{args.prefill_len} (logits for every token), "
        f"median of {args.prefill_repeats}; JAX first call {compile_s:.1f} s; max |dlogit| {diff:.2e}")
  print(f"  JAX    {jax_tps:9.1f} tok/s  times {[round(t, 3) for t in jax_times]}")
  print(f"  torch  {torch_tps:9.1f} tok/s  times {[round(t, 3) for t in torch_times]}")
  print(f"  JAX/torch = {jax_tps / torch_tps:.2f}")
  rows.append((f"prefill {args.prefill_batch}x{args.prefill_len} tok/s", jax_tps, torch_tps))

  # Greedy decode: KV-cached generation of exactly new_tokens per sample.
  k = args.new_tokens
  prompts = rng.randint(0, vocab, size=(args.decode_batch, args.prompt_len)).astype(np.int32)
  t0 = time.perf_counter()
  jax_tokens = vgen.generate(model, prompts, max_new_tokens=k, eos_token_ids=[])
  compile_s = time.perf_counter() - t0
  jax_times = _time(lambda: vgen.generate(model, prompts, max_new_tokens=k, eos_token_ids=[]),
                    args.decode_repeats)
  torch_prompts = torch.from_numpy(prompts.astype(np.int64))
  gen_kwargs = dict(attention_mask=torch.ones_like(torch_prompts), do_sample=False,
                    max_new_tokens=k, min_new_tokens=k, pad_token_id=model.config.pad_token_id or 0)
  with torch.inference_mode():
    hf_tokens = hf.generate(torch_prompts, **gen_kwargs)[:, args.prompt_len:].numpy()  # warm-up
    torch_times = _time(lambda: hf.generate(torch_prompts, **gen_kwargs), args.decode_repeats)
  agree = float(np.mean(jax_tokens == hf_tokens))
  n_new = args.decode_batch * k
  jax_tps = n_new / statistics.median(jax_times)
  torch_tps = n_new / statistics.median(torch_times)
  print(f"\ngreedy decode {args.decode_batch}x{args.prompt_len} prompt + {k} new, "
        f"median of {args.decode_repeats}; JAX first call {compile_s:.1f} s; "
        f"tokens equal to HF's: {agree:.1%}")
  print(f"  JAX    {jax_tps:9.1f} new tok/s  times {[round(t, 3) for t in jax_times]}")
  print(f"  torch  {torch_tps:9.1f} new tok/s  times {[round(t, 3) for t in torch_times]}")
  print(f"  JAX/torch = {jax_tps / torch_tps:.2f}")
  rows.append((f"decode {args.decode_batch}x{args.prompt_len}+{k} new tok/s", jax_tps, torch_tps))

  mem_rows = []
  if not args.skip_rss:
    with tempfile.TemporaryDirectory() as tmp:
      hf_dir = os.path.join(tmp, "hf")
      convert.to_hf(model, hf_dir)
      del model, hf, state
      size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(hf_dir, "*.safetensors")))
      print(f"\nconversion memory: fp32 safetensors {size / 2 ** 20:.1f} MiB, "
            f"each in a fresh process (baseline = VmRSS after imports + CPU client)")
      for mode, label in (("from_hf", "convert.from_hf(dir)"),
                          ("cli", "from-hf CLI (from_hf + save_model)")):
        r = _run_child(mode, hf_dir, os.path.join(tmp, f"jax_{mode}"))
        base = r["base"]["VmRSS"]
        delta = (r["peak_maxrss"] - base) * 1024
        ratio = delta / size
        sp = r["sampled_peak"]
        print(f"  {label}: {r['seconds']:.1f} s, baseline {base / 1024:.0f} MiB, "
              f"peak {r['peak_maxrss'] / 1024:.0f} MiB, delta {delta / 2 ** 20:.0f} MiB "
              f"= {ratio:.2f}x checkpoint (goal <= {RSS_GOAL}x: {'ok' if ratio <= RSS_GOAL else 'OVER'})")
        print(f"    sampled peaks: anon {(sp['RssAnon'] - base_anon(r)) / 1024:+.0f} MiB over baseline, "
              f"file-mapped {(sp['RssFile'] - r['base']['RssFile']) / 1024:+.0f} MiB over baseline; "
              f"at end VmRSS {r['end']['VmRSS'] / 1024:.0f} MiB")
        mem_rows.append((label, ratio))

  print("\n" + "=" * 64)
  print(f"{'measure':38s} {'JAX':>9s} {'torch':>9s} {'ratio':>6s}")
  for name, j, t in rows:
    print(f"{name:38s} {j:9.1f} {t:9.1f} {j / t:6.2f}")
  for label, ratio in mem_rows:
    print(f"{'peak RSS / ckpt: ' + label[:21]:38s} {'':9s} {'':9s} {ratio:6.2f}  (goal <= {RSS_GOAL})")
  print("=" * 64)
  return 0


def base_anon(r: dict) -> int:
  return r["base"]["RssAnon"]


if __name__ == "__main__":
  if len(sys.argv) == 5 and sys.argv[1] == _CHILD_FLAG:
    _rss_child(*sys.argv[2:])
    sys.exit(0)
  sys.exit(main())
