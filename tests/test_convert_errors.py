"""Bad input to `python -m visregion_jax.convert` is one `error:` line and exit status 2.

Users meet these paths far more often than the happy one (a half-downloaded shard,
a hand-edited config.json, a typo in a flag), and the promise of the CLI is that
they never need to read a traceback to learn which file or key is wrong. Each case
starts from a tiny valid HF Llama and breaks exactly one thing, so a failure here
points at one validation, not at a generally broken converter (the positive control
proves the unbroken model converts).

Most cases call `main()` in-process to keep the suite fast; a few go through a real
`python -m` subprocess, because only there does an uncaught exception actually show
up as a traceback on stderr and a non-2 exit status.
"""

import json
import os
import shutil
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from visregion_jax.convert.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
DOWN_PROJ = "model.layers.1.mlp.down_proj.weight"
Q_PROJ = "model.layers.0.self_attn.q_proj.weight"


# --- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
  """A valid tiny HF Llama directory, built once; cases copy it before breaking it."""
  torch.manual_seed(0)
  config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2)
  directory = tmp_path_factory.mktemp("tiny_hf") / "hf"
  transformers.LlamaForCausalLM(config).save_pretrained(str(directory))
  return str(directory)


@pytest.fixture(scope="module")
def jax_ckpt(tiny_hf, tmp_path_factory):
  """The tiny model as a JAX checkpoint, written by the CLI itself (to-hf cases read it)."""
  dst = str(tmp_path_factory.mktemp("jax") / "ckpt")
  assert main(["from-hf", "--src", tiny_hf, "--dst", dst]) == 0
  return dst


def copy_of(tiny_hf: str, tmp_path, name: str = "hf") -> str:
  return shutil.copytree(tiny_hf, str(tmp_path / name))


def edit_config(directory: str, **changes) -> None:
  """Sets keys of config.json; a value of None deletes the key."""
  path = os.path.join(directory, "config.json")
  with open(path, encoding="utf-8") as f:
    config = json.load(f)
  for key, value in changes.items():
    if value is None:
      config.pop(key, None)
    else:
      config[key] = value
  with open(path, "w", encoding="utf-8") as f:
    json.dump(config, f)


def edit_tensors(directory: str, change) -> None:
  """Re-saves model.safetensors after `change(dict of arrays)` mutates it in place."""
  path = os.path.join(directory, SINGLE)
  tensors = load_file(path)
  change(tensors)
  save_file(tensors, path, metadata={"format": "pt"})


def shard(directory: str, edit_weight_map=lambda weight_map: None) -> dict:
  """Splits model.safetensors into two shards + index; `edit_weight_map` may then corrupt the index."""
  tensors = load_file(os.path.join(directory, SINGLE))
  os.remove(os.path.join(directory, SINGLE))
  keys = sorted(tensors)
  weight_map = {k: SHARDS[0] if i < len(keys) // 2 else SHARDS[1] for i, k in enumerate(keys)}
  for shard_name in SHARDS:
    save_file({k: tensors[k] for k in keys if weight_map[k] == shard_name},
              os.path.join(directory, shard_name), metadata={"format": "pt"})
  edit_weight_map(weight_map)
  with open(os.path.join(directory, INDEX), "w", encoding="utf-8") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  return weight_map


def run_in_process(argv, capsys):
  """(exit status, stderr) of main(argv); argparse errors exit through SystemExit."""
  capsys.readouterr()
  try:
    rc = main(argv)
  except SystemExit as e:
    rc = e.code
  return rc, capsys.readouterr().err


def run_subprocess(argv):
  """(exit status, stderr) of the real `python -m visregion_jax.convert` command line."""
  result = subprocess.run([sys.executable, "-m", "visregion_jax.convert", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
  return result.returncode, result.stderr


def assert_one_error_line(rc, err: str, *needles: str) -> None:
  """The CLI contract: status 2, exactly one `error: ` line naming the culprit, no traceback."""
  assert "Traceback" not in err, err
  assert rc == 2, (rc, err)
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].strip(), f"expected one stderr line, got {err!r}"
  assert lines[0].startswith("error: "), lines[0]
  for needle in needles:
    assert needle in lines[0], f"{needle!r} not named in {lines[0]!r}"


# --- bad input cases ----------------------------------------------------------------------
# Each builder gets (tiny_hf, jax_ckpt, tmp_path) and returns (argv, strings the line must name).


def from_hf(src, tmp_path):
  return ["from-hf", "--src", str(src), "--dst", str(tmp_path / "out")]


def case_src_missing(hf, ckpt, tmp_path):
  return from_hf(tmp_path / "no_such_model", tmp_path), ["no_such_model"]


def case_src_regular_file(hf, ckpt, tmp_path):
  path = tmp_path / "weights.bin"
  path.write_bytes(b"not a model")
  return from_hf(path, tmp_path), ["weights.bin"]


def case_config_missing(hf, ckpt, tmp_path):
  d = copy_of(hf, tmp_path)
  os.remove(os.path.join(d, "config.json"))
  return from_hf(d, tmp_path), [os.path.join(d, "config.json")]


def case_config_invalid_json(hf, ckpt, tmp_path):
  d = copy_of(hf, tmp_path)
  with open(os.path.join(d, "config.json"), "w", encoding="utf-8") as f:
    f.write('{"model_type": "llama", "hidden_size": 32,')  # cut off mid-object
  return from_hf(d, tmp_path), [os.path.join(d, "config.json")]


def case_config_not_an_object(hf, ckpt, tmp_path):
  d = copy_of(hf, tmp_path)
  with open(os.path.join(d, "config.json"), "w", encoding="utf-8") as f:
    json.dump([1, 2, 3], f)
  return from_hf(d, tmp_path), ["config.json"]


def case_unknown_architecture(hf, ckpt, tmp_path):
  d = copy_of(hf, tmp_path)
  edit_config(d, model_type="gpt2")
  return from_hf(d, tmp_path), ["config.json", "model_type", "gpt2"]


def case_heads_not_dividing_hidden(hf, ckpt, tmp_path):
  d = copy_of(hf, tmp_path)  # without head_dim, it must come from hidden_size / heads
  edit_config(d, head_dim=None, num_attention_heads=5, num_key_value_heads=5)
  return from_hf(d, tmp_path), ["config.json", "hidden_size", "num_attention_heads"]


def case_kv_heads_not_dividing_heads(hf, ckpt, tmp_path):
  d = copy_of(hf, tmp_path)
  edit_config(d, num_key_value_heads=3)
  return from_hf(d, tmp_path), ["config.json", "num_key_value_heads"]


def case_rope_yarn_parameters(hf, ckpt, tmp_path):
  d = copy_of(hf, tmp_path)  # transformers 5 spelling
  edit_config(d, rope_parameters={"rope_type": "yarn", "factor": 2.0, "rope_theta": 10000.0})
  return from_hf(d, tmp_path), ["config.json", "rope_type", "yarn"]


def case_rope_yarn_scaling(hf, ckpt, tmp_path):
  d = copy_of(hf, tmp_path)  # transformers 4 spelling
  edit_config(d, rope_parameters=None, rope_theta=10000.0,
              rope_scaling={"rope_type": "yarn", "factor": 2.0})
  return from_hf(d, tmp_path), ["config.json", "rope_type", "yarn"]


def case_linear_rope_without_factor(hf, ckpt, tmp_path):
  d = copy_of(hf, tmp_path)
  edit_config(d, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0})
  return from_hf(d, tmp_path), ["config.json", "factor"]


def case_hidden_size_string(hf, ckpt, tmp_path):
  d = copy_of(hf, tmp_path)
  edit_config(d, hidden_size="32")
  return from_hf(d, tmp_path), ["config.json", "hidden_size"]


def case_safetensors_missing(hf, ckpt, tmp_path):
  d = copy_of(hf, tmp_path)
  os.remove(os.path.join(d, SINGLE))
  return from_hf(d, tmp_path), [SINGLE]


def case_safetensors_truncated(hf, ckpt, tmp_path):
  d = copy_of(hf, tmp_path)
  path = os.path.join(d, SINGLE)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  return from_hf(d, tmp_path), [path]


def case_safetensors_corrupt_header(hf, ckpt, tmp_path):
  d = copy_of(hf, tmp_path)
  path = os.path.join(d, SINGLE)
  size = os.path.getsize(path)
  with open(path, "wb") as f:
    f.write(np.random.default_rng(0).bytes(size))
  return from_hf(d, tmp_path), [path]


def case_tensor_missing(hf, ckpt, tmp_path):
  d = copy_of(hf, tmp_path)
  edit_tensors(d, lambda t: t.pop(DOWN_PROJ))
  return from_hf(d, tmp_path), [DOWN_PROJ]


def case_tensor_unexpected(hf, ckpt, tmp_path):
  d = copy_of(hf, tmp_path)
  edit_tensors(d, lambda t: t.update({"model.extra_head.weight": np.zeros((4, 32), np.float32)}))
  return from_hf(d, tmp_path), ["model.extra_head.weight"]


def case_tensor_wrong_shape(hf, ckpt, tmp_path):
  d = copy_of(hf, tmp_path)
  edit_tensors(d, lambda t: t.update({Q_PROJ: np.zeros((32, 31), np.float32)}))
  return from_hf(d, tmp_path), [Q_PROJ, "[32, 31]"]


def case_shard_outside_directory(hf, ckpt, tmp_path):
  d = copy_of(hf, tmp_path)
  shard(d, lambda weight_map: weight_map.update({DOWN_PROJ: "../x.safetensors"}))
  return from_hf(d, tmp_path), [INDEX, "../x.safetensors"]


def case_shard_missing(hf, ckpt, tmp_path):
  d = copy_of(hf, tmp_path)
  shard(d)
  os.remove(os.path.join(d, SHARDS[1]))
  return from_hf(d, tmp_path), [SHARDS[1]]


def case_index_not_a_mapping(hf, ckpt, tmp_path):
  d = copy_of(hf, tmp_path)
  shard(d)
  with open(os.path.join(d, INDEX), "w", encoding="utf-8") as f:
    json.dump({"weight_map": []}, f)
  return from_hf(d, tmp_path), [INDEX, "weight_map"]


def case_gguf_garbage(hf, ckpt, tmp_path):
  path = tmp_path / "model.gguf"
  path.write_bytes(np.random.default_rng(1).bytes(4096))
  return from_hf(path, tmp_path), ["model.gguf"]


def case_gguf_not_llama(hf, ckpt, tmp_path):
  path = str(tmp_path / "gpt2.gguf")
  writer = gguf.GGUFWriter(path, arch="gpt2")
  writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return from_hf(path, tmp_path), ["gpt2.gguf", "general.architecture"]


def case_from_hf_dst_not_empty(hf, ckpt, tmp_path):
  dst = tmp_path / "taken"
  dst.mkdir()
  (dst / "keep.txt").write_text("someone else's file")
  return ["from-hf", "--src", hf, "--dst", str(dst)], [str(dst)]


def case_to_hf_src_neither(hf, ckpt, tmp_path):
  src = tmp_path / "just_notes"
  src.mkdir()
  (src / "README.txt").write_text("neither a JAX checkpoint nor an HF model")
  return ["to-hf", "--src", str(src), "--dst", str(tmp_path / "out")], [str(src)]


def case_to_hf_dst_not_empty(hf, ckpt, tmp_path):
  dst = tmp_path / "taken"
  dst.mkdir()
  (dst / "keep.txt").write_text("someone else's file")
  return ["to-hf", "--src", ckpt, "--dst", str(dst)], [str(dst), "--overwrite"]


def case_to_hf_bad_shard_size(hf, ckpt, tmp_path):
  return (["to-hf", "--src", ckpt, "--dst", str(tmp_path / "out"), "--max-shard-size", "lots"],
          ["--max-shard-size", "lots"])


def case_jax_config_invalid_json(hf, ckpt, tmp_path):
  src = shutil.copytree(ckpt, str(tmp_path / "ckpt"))
  with open(os.path.join(src, "visregion_model.json"), "w", encoding="utf-8") as f:
    f.write("{ not json")
  return ["to-hf", "--src", src, "--dst", str(tmp_path / "out")], ["visregion_model.json"]


def case_jax_config_unknown_key(hf, ckpt, tmp_path):
  src = shutil.copytree(ckpt, str(tmp_path / "ckpt"))
  path = os.path.join(src, "visregion_model.json")
  with open(path, encoding="utf-8") as f:
    config = json.load(f)
  config["num_wizards"] = 3
  with open(path, "w", encoding="utf-8") as f:
    json.dump(config, f)
  return ["to-hf", "--src", src, "--dst", str(tmp_path / "out")], ["visregion_model.json", "num_wizards"]


def case_jax_params_missing(hf, ckpt, tmp_path):
  src = shutil.copytree(ckpt, str(tmp_path / "ckpt"))
  shutil.rmtree(os.path.join(src, "params"))
  return ["to-hf", "--src", src, "--dst", str(tmp_path / "out")], [os.path.join(src, "params")]


def case_unknown_flag(hf, ckpt, tmp_path):
  return from_hf(hf, tmp_path) + ["--bogus-flag"], ["--bogus-flag"]


def case_missing_subcommand(hf, ckpt, tmp_path):
  return [], ["command"]


def case_unknown_subcommand(hf, ckpt, tmp_path):
  return ["to-jax", "--src", hf], ["to-jax"]


def case_missing_dst(hf, ckpt, tmp_path):
  return ["from-hf", "--src", hf], ["--dst"]


def case_bad_param_dtype(hf, ckpt, tmp_path):
  return from_hf(hf, tmp_path) + ["--param-dtype", "int4"], ["--param-dtype", "int4"]


CASES = {name[len("case_"):]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}
# The subprocess runs cover each layer that could leak a traceback: argparse, the
# early path checks, the safetensors reader after JAX has started, and to-hf.
SUBPROCESS_CASES = ("src_missing", "tensor_wrong_shape", "unknown_flag", "to_hf_dst_not_empty")


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_in_process(name, tiny_hf, jax_ckpt, tmp_path, capsys):
  argv, needles = CASES[name](tiny_hf, jax_ckpt, tmp_path)
  rc, err = run_in_process(argv, capsys)
  assert_one_error_line(rc, err, *needles)
  if argv[:1] == ["from-hf"] and "--dst" in argv and name != "from_hf_dst_not_empty":
    assert not os.path.exists(argv[argv.index("--dst") + 1]), "a failed import left a checkpoint"


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_input_subprocess(name, tiny_hf, jax_ckpt, tmp_path):
  argv, needles = CASES[name](tiny_hf, jax_ckpt, tmp_path)
  rc, err = run_subprocess(argv)
  assert_one_error_line(rc, err, *needles)


def test_positive_control_round_trip(tiny_hf, jax_ckpt, tmp_path, capsys):
  """The unbroken model converts both ways, so the cases above fail for their one defect."""
  dst = str(tmp_path / "hf_again")
  rc, err = run_in_process(["to-hf", "--src", jax_ckpt, "--dst", dst, "--max-shard-size", "20KB"],
                           capsys)
  assert rc == 0, err
  assert os.path.exists(os.path.join(dst, INDEX))  # 20KB forces shards: the index path works
  with open(os.path.join(dst, INDEX), encoding="utf-8") as f:
    files = sorted(set(json.load(f)["weight_map"].values()))
  exported = {}
  for name in files:
    exported.update(load_file(os.path.join(dst, name)))
  original = load_file(os.path.join(tiny_hf, SINGLE))
  assert sorted(exported) == sorted(original)
  for key, value in original.items():
    assert exported[key].tobytes() == value.tobytes(), key
  # The sharded export reads back too, and --overwrite lets to-hf reuse a non-empty dst.
  again = str(tmp_path / "jax_again")
  assert run_in_process(["from-hf", "--src", dst, "--dst", again], capsys)[0] == 0
  assert run_in_process(["to-hf", "--src", again, "--dst", dst, "--overwrite"], capsys)[0] == 0


# --- inputs that once escaped as tracebacks or were silently accepted (now errors) ---------


def case_index_not_an_object(hf, tmp_path):
  d = copy_of(hf, tmp_path)
  shard(d)
  with open(os.path.join(d, INDEX), "w", encoding="utf-8") as f:
    json.dump([1, 2], f)
  return from_hf(d, tmp_path), [INDEX]


def case_index_points_to_wrong_shard(hf, tmp_path):
  d = copy_of(hf, tmp_path)  # the index says shard 2, but the tensor lives in shard 1
  weight_map = shard(d, lambda wm: None)
  key = next(k for k, f in sorted(weight_map.items()) if f == SHARDS[0])
  weight_map[key] = SHARDS[1]
  with open(os.path.join(d, INDEX), "w", encoding="utf-8") as f:
    json.dump({"weight_map": weight_map}, f)
  return from_hf(d, tmp_path), [SHARDS[1], key]


def case_rope_scaling_not_a_mapping(hf, tmp_path):
  d = copy_of(hf, tmp_path)
  edit_config(d, rope_parameters=None, rope_scaling="yarn")
  return from_hf(d, tmp_path), ["config.json", "rope_scaling"]


def case_partial_rotary_factor_string(hf, tmp_path):
  d = copy_of(hf, tmp_path)
  edit_config(d, partial_rotary_factor="half")
  return from_hf(d, tmp_path), ["config.json", "partial_rotary_factor"]


def case_config_json_is_a_directory(hf, tmp_path):
  d = copy_of(hf, tmp_path)
  os.remove(os.path.join(d, "config.json"))
  os.mkdir(os.path.join(d, "config.json"))
  return from_hf(d, tmp_path), ["config.json"]


def case_to_hf_dst_is_a_file(hf, tmp_path):
  dst = tmp_path / "out.txt"
  dst.write_text("a file, not a directory")
  return ["to-hf", "--src", hf, "--dst", str(dst)], ["out.txt"]


def case_from_hf_dst_is_a_file(hf, tmp_path):
  dst = tmp_path / "out.txt"
  dst.write_text("a file, not a directory")
  return ["from-hf", "--src", hf, "--dst", str(dst)], ["out.txt"]


def case_rope_scaling_ignored_next_to_rope_parameters(hf, tmp_path):
  # transformers 5 lets rope_scaling override rope_parameters (yarn here); we read the
  # default rope_parameters and silently convert a model with the wrong positions.
  d = copy_of(hf, tmp_path)
  edit_config(d, rope_scaling={"rope_type": "yarn", "factor": 2.0})
  if transformers.AutoConfig.from_pretrained(d).rope_parameters["rope_type"] != "yarn":
    raise RuntimeError("premise: transformers should read this config as yarn")
  return from_hf(d, tmp_path), ["config.json", "rope_type", "yarn"]


FIXED_BUGS = {
    "index_not_an_object": case_index_not_an_object,
    "index_points_to_wrong_shard": case_index_points_to_wrong_shard,
    "rope_scaling_not_a_mapping": case_rope_scaling_not_a_mapping,
    "partial_rotary_factor_string": case_partial_rotary_factor_string,
    "config_json_is_a_directory": case_config_json_is_a_directory,
    "to_hf_dst_is_a_file": case_to_hf_dst_is_a_file,
    "from_hf_dst_is_a_file": case_from_hf_dst_is_a_file,
    "rope_scaling_ignored_next_to_rope_parameters": case_rope_scaling_ignored_next_to_rope_parameters,
}


@pytest.mark.parametrize("name", sorted(FIXED_BUGS))
def test_former_bug(name, tiny_hf, tmp_path, capsys):
  """Inputs that once escaped as tracebacks or silent wrong conversions."""
  argv, needles = FIXED_BUGS[name](tiny_hf, tmp_path)
  rc, err = run_in_process(argv, capsys)
  assert_one_error_line(rc, err, *needles)
