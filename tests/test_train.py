"""End-to-end training runs (visregion_jax.train) on tiny random models.

The references are independent of the code under test: the base weights are the
HF safetensors the fixtures wrote (read with safetensors.numpy and mapped to our
paths by this file's own name rules), the region is the paper's rule worked out
by hand for 4 layers, and LoRA merges are recomputed in numpy. Compiling dominates
a run, so one full-update and one LoRA run each carry several checks.
"""

import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import train_fixtures
from consumer_check import check_transformers_path
from flax import nnx
from safetensors.numpy import load_file

from visregion_jax import optim
from visregion_jax.config.loading import load_config
from visregion_jax.errors import VisRegionError
from visregion_jax.train import builder, loop
from visregion_jax.train.__main__ import main as train_main
from visregion_jax.train.__main__ import train as train_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "demo.py")
NUM_LAYERS = 4
# uniform, fraction 0.25 of 4 layers: k = round(1.0) = 1 layer, taken from the lower
# half (2 layers) walking forward from layer 1 -> {1}.
REGION = (1,)
LORA_RANK, LORA_ALPHA = 4, 8.0
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
STEPS = 3


# --- independent references ----------------------------------------------------------

def hf_decoder_name(path: tuple) -> tuple:
  """(HF key of a `language_model.*` path, whether HF stores it transposed)."""
  rest = [str(p) for p in path[1:]]
  if rest == ["embed_tokens", "embedding"]:
    return "model.embed_tokens.weight", False
  if rest == ["lm_head", "kernel"]:
    return "lm_head.weight", True
  name = ".".join(rest)
  if name.endswith(".scale"):
    return "model." + name[:-len("scale")] + "weight", False
  if name.endswith(".kernel"):
    return "model." + name[:-len("kernel")] + "weight", True
  raise AssertionError(f"unexpected decoder parameter {path}")


def hf_tower_name(path: tuple) -> tuple:
  """(HF CLIPVisionModel key of a `vision_tower.*` path, how to turn HF into ours)."""
  rest = [str(p) for p in path[1:]]
  name = ".".join(rest)
  if name == "patch_embedding.kernel":  # Conv2d [out, in, kh, kw] -> [kh, kw, in, out]
    return "embeddings.patch_embedding.weight", lambda w: w.transpose(2, 3, 1, 0)
  if name == "class_embedding":
    return "embeddings.class_embedding", lambda w: w
  if name == "position_embedding":
    return "embeddings.position_embedding.weight", lambda w: w
  if rest[0] == "layers":
    name = "encoder." + name
  if name.endswith(".scale"):
    return name[:-len("scale")] + "weight", lambda w: w
  if name.endswith(".kernel"):
    return name[:-len("kernel")] + "weight", lambda w: w.T
  if name.endswith(".bias"):
    return name, lambda w: w
  raise AssertionError(f"unexpected vision tower parameter {path}")


def load_tower(directory: str) -> dict:
  """HF CLIPVisionModel tensors, keys relative to the vision transformer's root."""
  return {k[len("vision_model."):] if k.startswith("vision_model.") else k: v
          for k, v in load_file(os.path.join(directory, "model.safetensors")).items()}


def expected_base(path: tuple, decoder: dict, tower: dict) -> np.ndarray:
  """The base value of one of our (non-projector, non-LoRA) parameters."""
  if path[0] == "vision_tower":
    key, to_ours = hf_tower_name(path)
    return to_ours(tower[key])
  key, transposed = hf_decoder_name(path)
  value = decoder[key]
  if key == "model.embed_tokens.weight":  # the `<image>` row: mean of the others, float32
    mean = value.astype(np.float64).mean(axis=0, keepdims=True).astype(value.dtype)
    return np.concatenate([value, mean], axis=0)
  return value.T if transposed else value


def flat_params(model) -> dict:
  """{path: numpy value} of every nnx.Param (LoRA factors included)."""
  return {tuple(p): np.asarray(jax.device_get(v.get_value()))
          for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def decoder_layer(path: tuple):
  return path[2] if path[0] == "language_model" and path[1] == "layers" else None


def is_lora(path: tuple) -> bool:
  return str(path[-1]) in ("lora_a", "lora_b")


def assert_base_identical(path, value, decoder, tower):
  want = expected_base(path, decoder, tower)
  assert value.dtype == want.dtype and value.shape == want.shape, path
  if path == ("language_model", "embed_tokens", "embedding"):
    vocab = decoder["model.embed_tokens.weight"].shape[0]
    assert value.shape[0] == vocab + 1
    np.testing.assert_array_equal(value[:vocab], want[:vocab], err_msg=str(path))
    # float32 sums in another order may differ in the last bits; the row is ~1e-4 in size
    np.testing.assert_allclose(value[vocab:], want[vocab:], rtol=0, atol=1e-8, err_msg=str(path))
    return
  np.testing.assert_array_equal(value, want, err_msg=str(path))


def checkpoint_bytes(step_dir: str) -> tuple:
  """(bytes of 0-d arrays, bytes of the others, their count) of a saved opt_state."""
  with ocp.StandardCheckpointer() as checkpointer:
    tree = checkpointer.metadata(os.path.join(step_dir, "opt_state")).item_metadata
  scalars = arrays = 0
  for leaf in jax.tree.leaves(dict(tree.items())):
    size = int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    if leaf.shape == ():
      scalars += size
    else:
      arrays += size
  return scalars, arrays


def nbytes(values) -> int:
  return sum(int(v.size) * v.dtype.itemsize for v in values)


# --- shared inputs and runs --------------------------------------------------------------
# Each training run is used by exactly one test: `make test` runs `pytest -n 2` with
# load distribution, where a module fixture shared by tests on two workers would be
# computed (compiled) twice. The checks are split into functions per acceptance item.

@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  return train_fixtures.build_inputs(str(tmp_path_factory.mktemp("train_inputs")))


@pytest.fixture(scope="module")
def base(inputs):
  return (load_file(os.path.join(inputs["decoder"], "model.safetensors")),
          load_tower(inputs["tower"]))


def run_tiny(inputs, workdir, **extra) -> dict:
  config = load_config(train_fixtures.overrides(inputs, workdir, **extra), "test")
  results = loop.run(config)
  return {"config": config, "workdir": workdir, "results": results,
          "params": flat_params(results["model"])}


def check_opt_state(run: dict, trainable: list) -> None:
  """The saved optimizer state: AdamW's mu and nu, each the shape of a trainable
  parameter, plus a few int32 step counts; nothing for the frozen base."""
  params = run["params"]
  assert trainable and all(v.dtype == np.float32 for v in trainable)  # float32 master copies
  scalars, arrays = checkpoint_bytes(os.path.join(run["workdir"], "checkpoints", str(STEPS)))
  assert arrays == 2 * nbytes(trainable)
  assert 0 < scalars <= 64
  assert arrays + scalars < 2 * nbytes(params.values()) / 2


# --- 1 + 3. full update: only the region and the projector move -------------------------

def check_full_update_params(params: dict, start: dict, decoder: dict, tower: dict) -> None:
  assert not any(is_lora(p) for p in params)
  assert not any(p[:2] == ("language_model", "lm_head") for p in params)  # tied: the embedding
  assert "lm_head.weight" not in decoder
  region_paths = [p for p in params if decoder_layer(p) in REGION]
  assert len(region_paths) == 9 * len(REGION)  # 2 norms + 7 linears per layer
  for path, value in params.items():
    if path[0] == "projector" or decoder_layer(path) in REGION:
      continue
    assert_base_identical(path, value, decoder, tower)
  for path in region_paths:
    base_value = expected_base(path, decoder, tower)
    assert params[path].dtype == np.float32 and params[path].shape == base_value.shape
    assert not np.array_equal(params[path], base_value), f"{path} did not change"
  projector = [p for p in params if p[0] == "projector"]
  assert len(projector) == 4
  for path in projector:
    assert not np.array_equal(params[path], start[path]), f"{path} did not change"
  # every HF tensor was checked: ours map one to one onto the HF keys
  assert sorted(hf_decoder_name(p)[0] for p in params if p[0] == "language_model") == sorted(decoder)
  assert sorted(hf_tower_name(p)[0] for p in params if p[0] == "vision_tower") == sorted(tower)


def check_reconstructed_opt_state(model, plan, train_config, params: dict) -> None:
  """The run's split -> labels -> optimizer path, shape-only (nothing allocated)."""
  _, state, frozen, _ = plan.split(model)
  tx, _ = optim.make_optimizer(train_config, plan.labels(state))
  shapes = [x for x in jax.tree.leaves(jax.eval_shape(tx.init, state)) if x.shape != ()]
  trainable_bytes = nbytes(jax.tree.leaves(state))
  assert {tuple(p) for p, _ in nnx.to_flat_state(state)} == {
      p for p in params if p[0] == "projector" or decoder_layer(p) in REGION}
  assert sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in shapes) == 2 * trainable_bytes
  assert 2 * trainable_bytes < nbytes(jax.tree.leaves(state)) + nbytes(jax.tree.leaves(frozen))


def check_reports(workdir: str) -> None:
  """TensorBoard holds the logged scalars of every step (read by TensorBoard's reader);
  `train.profile_steps=(2, 3)` left a profiler trace."""
  from test_progress import scalars  # pylint: disable=import-outside-toplevel
  read = scalars(workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    logged = {r["step"]: r for r in map(json.loads, f) if "loss" in r}
  assert sorted(logged) == list(range(1, STEPS + 1))
  for tag in ("loss", "grad_norm", "tokens_per_sec", "skipped_samples", "learning_rates/projector",
              "learning_rates/region"):
    assert read[tag] == pytest.approx({s: np.float32(r[tag.split("/")[0]] if "/" not in tag
                                                     else r["learning_rates"][tag.split("/")[1]])
                                       for s, r in logged.items()}), tag
  assert glob.glob(os.path.join(workdir, "profile", "**", "*.xplane.pb"), recursive=True)


def test_full_update_run(inputs, base, tmp_path):
  decoder, tower = base
  run = run_tiny(inputs, str(tmp_path / "full"), **{"region.strategy": "uniform", "region.lora_rank": 0,
                                                     "train.profile_steps": "(2, 3)"})
  check_reports(run["workdir"])
  # the model the run started from: the projector is fresh, so in no file
  model, plan = builder.build_model(run["config"], str(tmp_path / "init"))
  assert len(model.layers) == NUM_LAYERS and plan.region_layers == REGION
  params = run["params"]
  check_full_update_params(params, flat_params(model), decoder, tower)
  check_opt_state(run, [v for p, v in params.items() if p[0] == "projector" or decoder_layer(p) in REGION])
  check_reconstructed_opt_state(model, plan, run["config"].train, params)


# --- 2 + 3. LoRA: base untouched, export merges W + (alpha/r) A B -----------------------

def check_lora_params(params: dict, decoder: dict, tower: dict) -> None:
  for path, value in params.items():
    if path[0] == "projector" or is_lora(path):
      continue
    assert_base_identical(path, value, decoder, tower)
  factors = [p for p in params if is_lora(p)]
  assert len(factors) == 2 * len(LINEARS) * len(REGION)
  assert {decoder_layer(p) for p in factors} == set(REGION)


def check_lora_export(hf_dir: str, params: dict, decoder: dict, tower: dict) -> None:
  exported = {}
  for f in sorted(glob.glob(os.path.join(hf_dir, "*.safetensors"))):
    exported.update(load_file(f))
  scale = LORA_ALPHA / LORA_RANK
  merged_keys = set()
  for i in REGION:
    for linear in LINEARS:
      prefix = ("language_model", "layers", i) + tuple(linear.split("."))
      a = params[prefix + ("lora_a",)].astype(np.float64)
      b = params[prefix + ("lora_b",)].astype(np.float64)
      w = decoder[f"model.layers.{i}.{linear}.weight"]
      want = w.astype(np.float64) + scale * (a @ b).T  # HF weight [out, in] = kernel^T
      key = f"language_model.model.layers.{i}.{linear}.weight"
      got = exported[key]
      assert got.shape == w.shape and got.dtype == w.dtype
      assert np.abs(want - w).max() > 1e-4, f"{key}: LoRA was not trained, the merge is invisible"
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=key)
      merged_keys.add(key)
  for key, value in decoder.items():
    out_key = "language_model." + key
    if out_key in merged_keys:
      continue
    if key == "model.embed_tokens.weight":
      want = expected_base(("language_model", "embed_tokens", "embedding"), decoder, tower)
      np.testing.assert_array_equal(exported[out_key][:-1], value)
      np.testing.assert_allclose(exported[out_key][-1:], want[-1:], rtol=0, atol=1e-8)
      continue
    np.testing.assert_array_equal(exported[out_key], value, err_msg=key)
  for key, value in tower.items():
    np.testing.assert_array_equal(exported["vision_tower." + key], value, err_msg=key)
  for n in (0, 1):
    np.testing.assert_array_equal(exported[f"multi_modal_projector.linear_{n + 1}.weight"],
                                  params[("projector", "linears", n, "kernel")].T)
    np.testing.assert_array_equal(exported[f"multi_modal_projector.linear_{n + 1}.bias"],
                                  params[("projector", "linears", n, "bias")])
  assert len(exported) == len(decoder) + len(tower) + 4  # nothing else (no LoRA factors)


def test_lora_run(inputs, base, tmp_path):
  """Also runs with remat, as the paper configs do (tests/test_train_step.py checks that
  remat computes the same step)."""
  decoder, tower = base
  run = run_tiny(inputs, str(tmp_path / "lora"), **{
      "region.strategy": "uniform", "region.lora_rank": LORA_RANK, "region.lora_alpha": LORA_ALPHA,
      "region.lora_dropout": 0.0, "train.export_hf": "true", "model.remat": True})
  params = run["params"]
  check_lora_params(params, decoder, tower)
  check_lora_export(run["results"]["hf_dir"], params, decoder, tower)
  check_opt_state(run, [v for p, v in params.items() if p[0] == "projector" or is_lora(p)])


# --- 4. bad configs: one `error:` line, exit status 2 -----------------------------------

def _bad_config_cases():
  return {
      "unknown_key": ({"train.stepz": 3}, "train.stepz"),
      "layer_out_of_range": ({"region.strategy": "explicit", "region.layers": "(1,9)"}, "region.layers"),
      "fraction_zero": ({"region.fraction": 0}, "region.fraction"),
      "fraction_above_one": ({"region.fraction": 1.5}, "region.fraction"),
      "mesh_not_dividing": ({"mesh.data": len(jax.devices()) + 2, "mesh.fsdp": 1}, "mesh"),
      "missing_init_from": ({"model.init_from": "/nonexistent/visregion/model"},
                            "/nonexistent/visregion/model"),
  }


def assert_one_error_line(rc, err, out, named):
  assert rc == 2, (out, err)
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith("error: ") and named in lines[0], lines[0]
  assert "Traceback" not in err + out


@pytest.mark.parametrize("name", sorted(_bad_config_cases()))
def test_bad_config_exits_2_with_one_line(name, inputs, tmp_path, capsys):
  extra, named = _bad_config_cases()[name]
  argv = train_fixtures.overrides(inputs, str(tmp_path / "wd"), **extra)
  capsys.readouterr()
  rc = train_main(argv)
  captured = capsys.readouterr()
  assert_one_error_line(rc, captured.err, captured.out, named)
  assert not os.path.isdir(tmp_path / "wd" / "checkpoints")


def test_missing_config_file_exits_2(tmp_path, capsys):
  missing = str(tmp_path / "no_such_config.py")
  rc = train_main(["--config", missing, "--config.train.steps=1"])
  captured = capsys.readouterr()
  assert_one_error_line(rc, captured.err, captured.out, missing)


def test_whole_dict_override_is_applied_or_rejected_cleanly():
  """demo.py's dicts are ConfigDicts: `--config.demo.data_sizes={...}` replaces the
  dict; a non-dict is one `error:` naming the key, never an uncaught exception."""
  config = load_config(["--config", DEMO, "--config.demo.data_sizes={'num_train': 16}"], "test")
  assert config.demo.data_sizes.num_train == 16
  with pytest.raises(VisRegionError, match="demo.data_sizes"):
    load_config(["--config", DEMO, "--config.demo.data_sizes=[1, 2]"], "test")


def test_bad_config_through_subprocess(inputs, tmp_path):
  argv = train_fixtures.overrides(inputs, str(tmp_path / "wd"), **{"train.stepz": 3})
  proc = subprocess.run([sys.executable, "-m", "visregion_jax.train", *argv], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)
  assert_one_error_line(proc.returncode, proc.stderr, proc.stdout, "train.stepz")


# --- 5. the demo config, shrunk -----------------------------------------------------------

def demo_argv(workdir: str, init_from=None) -> list:
  """configs/demo.py's code path (synthetic set, tower pretraining, eval, export) made small.

  The tower pretraining keeps its default 300 steps (cheap at this size; compiling
  dominates): demo.py's dict has no `steps` key to override, and a whole-dict override
  is not accepted yet (test_whole_dict_override_is_applied_or_rejected_cleanly).
  """
  values = {"workdir": workdir, "train.steps": STEPS,
            "demo.data_sizes.num_train": 16, "demo.data_sizes.num_eval": 4,
            "demo.data_sizes.image_size": 48,
            "demo.tower.image_size": 16, "demo.tower.hidden_size": 16,
            "demo.tower.num_layers": 2, "demo.tower.num_heads": 2,
            "eval.num_samples": 2, "eval.max_new_tokens": 2}
  if init_from:
    values["model.init_from"] = init_from
  return ["--config", DEMO] + [f"--config.{k}={v}" for k, v in values.items()]


def check_demo_run(workdir: str, results: dict):
  tower_dir = os.path.join(workdir, "vision_tower")
  assert os.path.isfile(os.path.join(tower_dir, "pretrain_report.json"))
  assert os.path.isfile(os.path.join(workdir, "data", "manifest.json"))
  params = flat_params(results["model"])
  tower = load_tower(tower_dir)
  for path, value in params.items():  # the pretrained tower is used as is, frozen
    if path[0] == "vision_tower":
      key, to_ours = hf_tower_name(path)
      np.testing.assert_array_equal(value, to_ours(tower[key]), err_msg=str(path))
  assert {hf_tower_name(p)[0] for p in params if p[0] == "vision_tower"} == set(tower)
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  losses = {r["step"]: r["loss"] for r in records if "loss" in r}
  assert STEPS in losses and np.isfinite(list(losses.values())).all()
  assert "before" in results and "after" in results
  assert np.isfinite(results["after"]["eval_loss"])
  assert os.path.isfile(os.path.join(results["hf_dir"], "config.json"))
  check = results["transformers_check"]  # transformers, on the export, answers as the JAX model does
  assert check["count"] == 2 and check["agree"] == check["count"], check


def test_demo_config_three_steps(inputs, tmp_path):
  """The demo with the tiny random decoder (SmolLM2's tokenizer and chat template)."""
  workdir = str(tmp_path / "demo")
  config = load_config(demo_argv(workdir, init_from=inputs["decoder"]), "test")
  results = train_command(config)
  check_demo_run(workdir, results)


@pytest.mark.skipif(not os.environ.get("VISREGION_SLOW_TESTS"),
                    reason="real SmolLM2-135M demo takes ~150 s on 2 CPU cores; "
                           "set VISREGION_SLOW_TESTS=1 to run it")
def test_demo_config_three_steps_smollm2(tmp_path):
  workdir = str(tmp_path / "demo")
  results = train_command(load_config(demo_argv(workdir), "test"))
  check_demo_run(workdir, results)


def test_convert_to_hf_from_a_training_workdir(inputs, tmp_path):
  """`convert to-hf --src WORKDIR` rebuilds the base, restores the latest checkpoint's
  trained parameters and exports exactly what the run itself exported."""
  from visregion_jax.convert.__main__ import main as convert_main  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "run")
  loop.run(load_config(train_fixtures.overrides(inputs, workdir, **{
      "train.export_hf": "true", "region.lora_rank": "4", "region.lora_dropout": "0.0"}), "test"))
  assert convert_main(["to-hf", "--src", workdir, "--dst", str(tmp_path / "again")]) == 0
  ours = load_file(os.path.join(workdir, "hf", "model.safetensors"))
  again = load_file(str(tmp_path / "again" / "model.safetensors"))
  assert sorted(ours) == sorted(again)
  for key in ours:
    np.testing.assert_array_equal(ours[key], again[key], err_msg=key)
  check_transformers_path(str(tmp_path / "again"))  # the processor travels with it
