"""A red-team table: faults a hostile but fair user (or a pod) inflicts through the
command lines, and what each must give: one `error:` line and exit 2, or a counted
skip; in every case no traceback, no hang and nothing lost.

Classes: data, model files, workdirs and checkpoints, exports, generation, numerics.
"""

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import train_fixtures
from conftest import random_hf_model, save_hf_model, tiny_llama_config
from safetensors.numpy import load_file

from visregion_jax.convert.__main__ import main as convert_main
from visregion_jax.data import pipeline, skip, sources
from visregion_jax.data.image_processing import ImageProcessorConfig
from visregion_jax.generate.__main__ import main as generate_main
from visregion_jax.train.__main__ import main as train_main
from visregion_jax.train.checkpoint import TrainCheckpoints
from visregion_jax.train.integrity import MANIFEST
from visregion_jax.train.workdir_lock import LOCK

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_error(rc: int, captured, where: str) -> None:
  lines = captured.err.strip().splitlines()
  assert rc == 2, captured.err
  assert lines and lines[-1].startswith("error: ") and where in lines[-1], captured.err
  assert "Traceback" not in captured.err + captured.out
  assert sum(line.startswith("error: ") for line in lines) == 1


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  return train_fixtures.build_inputs(str(tmp_path_factory.mktemp("fault_inputs")))


def train_argv(inputs, workdir, **extra) -> list:
  return train_fixtures.overrides(inputs, str(workdir), **extra)


@pytest.fixture(scope="module")
def trained(inputs, tmp_path_factory):
  """A 3-step run whose workdir holds a stale lock (a dead process on this host) at the
  start: it is taken over. Leaves checkpoints 2 and 3."""
  workdir = tmp_path_factory.mktemp("trained")
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (workdir / LOCK).write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid}))
  assert train_main(train_argv(inputs, workdir)) == 0
  assert not (workdir / LOCK).exists()  # released at the end
  return workdir


# --- workdirs and checkpoints --------------------------------------------------------------

def test_stale_lock_is_taken_over(trained):
  assert sorted(os.listdir(trained / "checkpoints")) == ["2", "3"]


def test_second_run_on_a_workdir_in_use(inputs, tmp_path, capsys):
  tmp_path.joinpath(LOCK).write_text(json.dumps({"host": os.uname().nodename, "pid": os.getppid()}))
  one_error(train_main(train_argv(inputs, tmp_path)), capsys.readouterr(), LOCK)
  assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "config.json").exists()


def copy_run(trained, tmp_path) -> str:
  dest = str(tmp_path / "run")
  shutil.copytree(trained, dest)
  return dest


def largest_file(step_dir: str) -> str:
  files = [f for f in glob.glob(os.path.join(step_dir, "**", "*"), recursive=True)
           if os.path.isfile(f) and not f.endswith(MANIFEST)]
  return max(files, key=os.path.getsize)


def alter(path):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0xFF]))


def truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


DAMAGE = {"bytes_altered": (alter, "checksum mismatch"), "file_deleted": (os.remove, "is missing"),
          "file_truncated": (truncate, "bytes, ")}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_to_the_previous(trained, tmp_path, kind):
  workdir = copy_run(trained, tmp_path)
  harm, message = DAMAGE[kind]
  harm(largest_file(os.path.join(workdir, "checkpoints", "3")))
  warnings = []
  checkpoints = TrainCheckpoints(workdir)
  assert checkpoints.latest_intact_step(warn=warnings.append) == 2
  checkpoints.close()
  assert len(warnings) == 1 and "checkpoints/3 is damaged" in warnings[0] and message in warnings[0]


def test_checkpoint_without_checksums_is_restored_with_a_warning(trained, tmp_path):
  workdir = copy_run(trained, tmp_path)
  os.remove(os.path.join(workdir, "checkpoints", "3", MANIFEST))
  warnings = []
  checkpoints = TrainCheckpoints(workdir)
  assert checkpoints.latest_intact_step(warn=warnings.append) == 3
  checkpoints.close()
  assert "no checksums" in warnings[0]


def test_resume_skips_a_damaged_checkpoint_end_to_end(inputs, trained, tmp_path, capsys):
  workdir = copy_run(trained, tmp_path)
  alter(largest_file(os.path.join(workdir, "checkpoints", "3")))
  assert train_main(train_argv(inputs, workdir, **{"train.steps": 4})) == 0
  captured = capsys.readouterr()
  assert "checkpoints/3 is damaged" in captured.err and "resumed from step 2" in captured.out


def test_all_checkpoints_damaged_is_an_error(inputs, trained, tmp_path, capsys):
  workdir = copy_run(trained, tmp_path)
  for step in ("2", "3"):
    truncate(largest_file(os.path.join(workdir, "checkpoints", step)))
  one_error(train_main(train_argv(inputs, workdir)), capsys.readouterr(), "checkpoints")


def test_workdir_below_a_file(inputs, tmp_path, capsys):
  (tmp_path / "file").write_text("x")
  one_error(train_main(train_argv(inputs, tmp_path / "file" / "run")), capsys.readouterr(), "workdir")


def test_workdir_that_cannot_be_created(inputs, capsys):
  """An OS error (here /proc refuses a new directory even to root) is an `error:` line."""
  one_error(train_main(train_argv(inputs, "/proc/visregion_run")), capsys.readouterr(), "/proc/visregion_run")


# --- numerics ------------------------------------------------------------------------------

def test_diverging_run_ends_with_an_error_and_keeps_its_finite_checkpoint(inputs, tmp_path, capsys):
  """lr 1e30 blows the parameters up after the first steps: the run stops with an
  `error:` naming the last finite checkpoint, which is still there and finite."""
  rc = train_main(train_argv(inputs, tmp_path, **{"train.lr": 1e30, "train.projector_lr": 1e30,
                                                  "train.steps": 6, "train.checkpoint_every": 1}))
  captured = capsys.readouterr()
  one_error(rc, captured, "step ")
  assert "last finite checkpoint" in captured.err
  checkpoints = TrainCheckpoints(str(tmp_path))
  kept = checkpoints.all_steps()
  checkpoints.close()
  assert kept, "the newest finite checkpoint must be kept"
  arrays = glob.glob(os.path.join(str(tmp_path), "checkpoints", str(kept[-1]), "trainable", "**"), recursive=True)
  assert arrays


# --- data ----------------------------------------------------------------------------------

def image_config():
  return pipeline.DataConfig(template="tokenizer", max_length=96, global_batch_size=2, image_token_id=5,
                             num_image_tokens=4, image=ImageProcessorConfig(
                                 kind="siglip", size=28, crop_size=None, image_mean=(0.5,) * 3,
                                 image_std=(0.5,) * 3), num_epochs=1)


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_image_path_that_is_not_a_regular_file_is_a_counted_skip(tmp_path, kind):
  """A FIFO would block a read forever: it is never opened."""
  target = tmp_path / "images" / "x.png"
  target.parent.mkdir()
  os.mkfifo(target) if kind == "fifo" else target.mkdir()
  (tmp_path / "train.json").write_text(json.dumps([{"id": "a", "image": "images/x.png", "conversations": [
      {"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}]))
  source = sources.JsonSource(str(tmp_path / "train.json"), str(tmp_path))
  with pytest.raises(skip.SkipSample) as e:
    source[0]
  assert e.value.reason == skip.NOT_A_FILE


@pytest.mark.parametrize("name, content, where", [
    ("not_json", "[{", "train.json"), ("an_object", '{"a": 1}', "train.json"),
    ("empty_list", "[]", "data")])
def test_unusable_training_json(inputs, tmp_path, capsys, name, content, where):
  path = tmp_path / "train.json"
  path.write_text(content)
  argv = train_argv(inputs, tmp_path / "run", **{"data.train_json": str(path)})
  one_error(train_main(argv), capsys.readouterr(), where)


def test_data_with_no_usable_sample_is_an_error(inputs, tmp_path, capsys):
  """Every sample names a missing image: an `error:`, not an endless loop of skips."""
  samples = [{"id": str(i), "image": f"missing{i}.png", "conversations": [
      {"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]} for i in range(5)]
  (tmp_path / "train.json").write_text(json.dumps(samples))
  argv = train_argv(inputs, tmp_path / "run", **{"data.train_json": str(tmp_path / "train.json"),
                                                 "data.image_root": str(tmp_path)})
  one_error(train_main(argv), capsys.readouterr(), "no usable sample")


# --- model files ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
  return save_hf_model(random_hf_model(tiny_llama_config()), tmp_path_factory.mktemp("tiny_hf"))


def broken_copy(tiny_hf, tmp_path, harm) -> str:
  dest = str(tmp_path / "model")
  shutil.copytree(tiny_hf, dest)
  harm(dest)
  return dest


MODEL_FAULTS = {
    "config_not_json": (lambda d: open(os.path.join(d, "config.json"), "w").write("{"), "config.json"),
    "weights_truncated": (lambda d: truncate(os.path.join(d, "model.safetensors")), "model.safetensors"),
    "weights_missing": (lambda d: os.remove(os.path.join(d, "model.safetensors")), "model"),
    "weights_garbage": (lambda d: open(os.path.join(d, "model.safetensors"), "wb").write(b"\0" * 64),
                        "model.safetensors"),
}


@pytest.mark.parametrize("fault", sorted(MODEL_FAULTS))
def test_broken_model_files(tiny_hf, tmp_path, capsys, fault):
  harm, where = MODEL_FAULTS[fault]
  src = broken_copy(tiny_hf, tmp_path, harm)
  one_error(convert_main(["to-hf", "--src", src, "--dst", str(tmp_path / "out")]), capsys.readouterr(), where)
  assert not (tmp_path / "out").exists()


def test_gguf_that_is_not_gguf(tmp_path, capsys):
  path = tmp_path / "model.gguf"
  path.write_bytes(b"GGUF" + b"\xff" * 60)
  one_error(convert_main(["from-hf", "--src", str(path), "--dst", str(tmp_path / "out")]),
            capsys.readouterr(), "model.gguf")


# --- exports -------------------------------------------------------------------------------

def digest(directory: str) -> dict:
  return {os.path.relpath(f, directory): hashlib.sha256(open(f, "rb").read()).hexdigest()
          for f in glob.glob(os.path.join(directory, "**", "*"), recursive=True) if os.path.isfile(f)}


def test_failed_export_leaves_the_previous_one_whole(tiny_hf, tmp_path):
  """`ulimit -f` makes the new export's safetensors write fail (EFBIG): an `error:`
  line, and the previous export is byte-identical."""
  dst = str(tmp_path / "export")
  assert convert_main(["to-hf", "--src", tiny_hf, "--dst", dst]) == 0
  before = digest(dst)
  command = (f"ulimit -f 64; exec {sys.executable} -m visregion_jax.convert to-hf --src {tiny_hf} "
             f"--dst {dst} --overwrite --param-dtype float32")
  proc = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr
  assert "Traceback" not in proc.stderr
  assert digest(dst) == before
  assert [n for n in os.listdir(tmp_path) if n != "export"] == []  # no partial sibling left


def test_sharded_overwrite_of_a_single_file_export_leaves_nothing_stale(tiny_hf, tmp_path):
  dst = tmp_path / "export"
  (tmp_path / "notes.txt").write_text("mine")
  assert convert_main(["to-hf", "--src", tiny_hf, "--dst", str(dst)]) == 0
  assert (dst / "model.safetensors").exists()
  assert convert_main(["to-hf", "--src", tiny_hf, "--dst", str(dst), "--overwrite",
                       "--max-shard-size", "20KB"]) == 0
  assert not (dst / "model.safetensors").exists()
  index = json.loads((dst / "model.safetensors.index.json").read_text())
  assert set(os.listdir(dst)) >= set(index["weight_map"].values())
  assert not [n for n in os.listdir(dst) if n.endswith(".safetensors") and n not in index["weight_map"].values()]
  assert (tmp_path / "notes.txt").read_text() == "mine"  # files beside the export are kept
  merged = {}
  for shard in set(index["weight_map"].values()):
    merged.update(load_file(str(dst / shard)))
  original = load_file(os.path.join(tiny_hf, "model.safetensors"))
  assert sorted(merged) == sorted(original)
  assert all(np.array_equal(merged[k], original[k]) for k in original)


@pytest.mark.parametrize("size", ["0", "0MB", "-5", "lots"])
def test_shard_size_is_range_checked(tiny_hf, tmp_path, capsys, size):
  rc = convert_main(["to-hf", "--src", tiny_hf, "--dst", str(tmp_path / "out"), f"--max-shard-size={size}"])
  one_error(rc, capsys.readouterr(), "--max-shard-size")
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["dst_is_a_file", "dst_not_empty"])
def test_export_destination_refused(tiny_hf, tmp_path, capsys, case):
  dst = tmp_path / "dst"
  if case == "dst_is_a_file":
    dst.write_text("x")
  else:
    dst.mkdir()
    (dst / "keep.txt").write_text("x")
  one_error(convert_main(["to-hf", "--src", tiny_hf, "--dst", str(dst)]), capsys.readouterr(), str(dst))


# --- generation ----------------------------------------------------------------------------

@pytest.mark.parametrize("args, where", [
    (["--max-new-tokens", "0"], "max-new-tokens"), (["--max-new-tokens", "-5"], "max-new-tokens"),
    (["--max-new-tokens", "many"], "max-new-tokens"), (["--max-new-tokens", "99999999"], "max-new-tokens"),
    (["--temperature", "-1"], "temperature"), (["--temperature", "nan"], "temperature"),
    (["--top-p", "0"], "top-p"), (["--top-p", "1.5"], "top-p")])
def test_generation_numbers_are_range_checked(capsys, args, where):
  with pytest.raises(SystemExit) as e:
    generate_main([*args, "hello"])
  assert e.value.code == 2
  captured = capsys.readouterr()
  assert captured.err.startswith("error: ") and where in captured.err and "Traceback" not in captured.err


def test_generation_of_a_missing_model(tmp_path, capsys):
  one_error(generate_main(["--model", str(tmp_path / "nope"), "hello"]), capsys.readouterr(), "nope")
