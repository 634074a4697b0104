"""Shared test helpers: tiny random HF models built with transformers, saved to tmp dirs."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile


def _share_compilation_cache() -> str:
  """One persistent XLA compilation cache for the whole session: its pytest-xdist workers
  and every training or study subprocess they start inherit it from the environment,
  set here before JAX is imported. Most tests compile the same tiny models' steps and
  evaluations; compiling, not computing, is where a CPU test spends its time. A cache the
  caller set is kept; the one made here is removed at the end (pytest_unconfigure)."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return ""
  directory = tempfile.mkdtemp(prefix="visregion-tests-xla-cache-")
  os.environ.update(JAX_COMPILATION_CACHE_DIR=directory, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return directory


OWN_COMPILATION_CACHE = _share_compilation_cache()

import jax  # noqa: E402  (after the cache is in the environment)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402
from train_fixtures import build_inputs, overrides  # noqa: E402

from visregion_jax.config.loading import load_config  # noqa: E402
from visregion_jax.train import loop  # noqa: E402

torch.set_num_threads(1)


def pytest_unconfigure(config):
  del config
  if OWN_COMPILATION_CACHE:
    shutil.rmtree(OWN_COMPILATION_CACHE, ignore_errors=True)


def greedy_without_cache(model, ids, steps):
  """Reference: recompute the whole sequence each step and take the argmax. The sequence
  sits right-padded in one final-width buffer, so a single compiled forward serves every
  step: with causal attention, the logits at the last real position do not see the
  padding after it."""
  batch, width = ids.shape
  seq = np.zeros((batch, width + steps), np.int32)
  seq[:, :width] = ids
  forward = nnx.jit(lambda m, x: m(x))
  for t in range(width, width + steps):
    seq[:, t] = np.asarray(forward(model, jnp.asarray(seq)))[:, t - 1].argmax(-1)
  return seq[:, width:]


def save_hf_model(model, directory) -> str:
  model.save_pretrained(str(directory))
  return str(directory)


def tiny_llama_config(**overrides) -> transformers.LlamaConfig:
  kwargs = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
  kwargs.update(overrides)
  return transformers.LlamaConfig(**kwargs)


def tiny_phi3_config(**overrides) -> transformers.Phi3Config:
  kwargs = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                original_max_position_embeddings=1024, bos_token_id=1, eos_token_id=2,
                pad_token_id=0)
  kwargs.update(overrides)
  return transformers.Phi3Config(**kwargs)


def random_hf_model(config, seed: int = 0):
  """A random model whose norms and biases are not at their trivial init (ones / zeros)."""
  torch.manual_seed(seed)
  cls = {"llama": transformers.LlamaForCausalLM, "phi3": transformers.Phi3ForCausalLM}[config.model_type]
  model = cls(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight") or name.endswith(".bias"):
        p.add_(0.1 * torch.randn_like(p))
  return model


def random_llava_model(config, seed: int = 0):
  """A random LlavaForConditionalGeneration whose norms, biases and embeddings are moved
  away from their trivial init, so a mixed-up tensor cannot go unnoticed."""
  torch.manual_seed(seed)
  model = transformers.LlavaForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or name.endswith("bias") or "embedding" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model


def hf_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """transformers' logits with the same positions we use (real tokens counted from 0)."""
  positions = np.maximum(mask.cumsum(axis=1) - 1, 0)
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(positions)).logits.float().numpy()


@pytest.fixture
def rng():
  return np.random.RandomState(0)


def randomized(module, seed: int):
  """Every parameter of an NNX module drawn at random (norm scales around 1), so a mask,
  position or layout mistake changes the numbers instead of hiding at a trivial init."""
  state = nnx.state(module, nnx.Param)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  nnx.update(module, jax.tree.unflatten(tree, [0.15 * jax.random.normal(k, x.shape, x.dtype) + (x == 1)
                                                for k, x in zip(keys, leaves)]))
  return module


def run_command_here(main, argv) -> subprocess.CompletedProcess:
  """A command's `main` in this process, as `python -m` calls it: what it prints and its
  exit status, without a new interpreter's imports and compiles. A test file keeps one
  case through `python -m` itself."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      status = main(list(argv))
    except SystemExit as e:
      status = e.code
  return subprocess.CompletedProcess(list(argv), status, out.getvalue(), err.getvalue())


def run_on_8_devices(script: str, timeout: int = 900, args=()) -> dict:
  """Runs tests/`script` in a fresh process with 8 simulated CPU devices (XLA's device
  count is fixed when the backend starts) and returns the JSON it prints after `RESULT `."""
  tests = os.path.dirname(os.path.abspath(__file__))
  repo = os.path.dirname(tests)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([repo] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
  run = subprocess.run([sys.executable, os.path.join(tests, script), *args], cwd=repo, env=env, capture_output=True,
                       text=True, timeout=timeout, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  line = next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))
  return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="session")
def tiny_inputs(tmp_path_factory) -> dict:
  """tests/train_fixtures.py's tiny models and data, written once per test process."""
  return build_inputs(str(tmp_path_factory.mktemp("tiny_inputs")))


@pytest.fixture(scope="session")
def tiny_trained(tiny_inputs, tmp_path_factory) -> str:
  """The workdir of the tiny LLaVA trained on tiny_inputs with configs/tiny_test.py and
  exported to WORKDIR/hf, trained once per test process for the export, pruning and
  healing tests. Shared, so read only: a test that writes into a workdir copies it."""
  workdir = str(tmp_path_factory.mktemp("tiny_trained"))
  loop.run(load_config(overrides(tiny_inputs, workdir, **{"train.export_hf": "true"}), "test"))
  return workdir
