"""Bad configs fail fast: on configs/demo.py with a fresh workdir, each bad setting is one
`error:` line naming its key, exit status 2, in under 5 s, and nothing is synthesized,
pretrained or trained (the workdir is never created)."""

import os
import subprocess
import sys
import time

import pytest

from visregion_jax.convert.gguf_file import SMOLLM2_ALIAS, resolve_model_path
from visregion_jax.convert.gguf_metadata import block_count
from visregion_jax.errors import VisRegionError
from visregion_jax.train.__main__ import main as train_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "demo.py")

# name: (overrides, the key the error line must name)
BAD = {
    "fraction_zero": ({"region.fraction": "0"}, "region.fraction"),
    "fraction_above_one": ({"region.fraction": "1.5"}, "region.fraction"),
    "layer_99": ({"region.strategy": "explicit", "region.layers": "(1,99)"}, "region.layers"),
    "unknown_strategy": ({"region.strategy": "random"}, "region.strategy"),
    "negative_lora_rank": ({"region.lora_rank": "-1"}, "region.lora_rank"),
    "lora_dropout_one": ({"region.lora_dropout": "1.0"}, "region.lora_dropout"),
    "mesh_data_3": ({"mesh.data": "3"}, "mesh"),
    "mesh_fsdp_0": ({"mesh.fsdp": "0"}, "mesh.fsdp"),
    "missing_init_from": ({"model.init_from": "/no/such/model"}, "model.init_from"),
    "tower_is_a_file": ({"model.vision_tower": DEMO}, "model.vision_tower"),
    "unknown_projector": ({"model.projector_type": "mlp2x_relu"}, "model.projector_type"),
    "bad_dtype": ({"model.dtype": "float64"}, "model.dtype"),
    "unknown_attention": ({"model.attention": "flash"}, "model.attention"),
    "negative_loss_tiles": ({"model.loss_tiles": "-2"}, "model.loss_tiles"),
    "splash_off_tpu": ({"model.attention": "splash"}, "model.attention"),  # CPU, not interpreted
    "workdir_is_a_file": ({"workdir": DEMO}, "workdir"),
    "negative_steps": ({"train.steps": "-3"}, "train.steps"),
    "batch_size_zero": ({"train.batch_size": "0"}, "train.batch_size"),
    "grad_accum_not_dividing": ({"train.grad_accum": "3"}, "train.grad_accum"),
    "negative_lr": ({"train.lr": "-1e-4"}, "train.lr"),
    "warmup_ratio_above_one": ({"train.warmup_ratio": "1.5"}, "train.warmup_ratio"),
    "max_grad_norm_zero": ({"train.max_grad_norm": "0"}, "train.max_grad_norm"),
    "log_every_zero": ({"train.log_every": "0"}, "train.log_every"),
    "checkpoint_every_zero": ({"train.checkpoint_every": "0"}, "train.checkpoint_every"),
    "max_length_zero": ({"data.max_length": "0"}, "data.max_length"),
    "bucket_zero": ({"data.buckets": "(0,)"}, "data.buckets"),
    "unknown_template": ({"data.template": "alpaca"}, "data.template"),
    "negative_workers": ({"data.num_workers": "-1"}, "data.num_workers"),
    "missing_train_json": ({"data.train_json": "/no/such/train.json"}, "data.train_json"),
    "missing_image_root": ({"data.image_root": "/no/such/images"}, "data.image_root"),
    "eval_samples_zero": ({"eval.num_samples": "0"}, "eval.num_samples"),
    "unknown_hook": ({"hook": "no.such.hook"}, "hook"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_demo_config_fails_fast(name, tmp_path, capsys):
  overrides, key = BAD[name]
  workdir = tmp_path / "fresh"
  overrides = {"workdir": str(workdir), **overrides}
  argv = ["--config", DEMO] + [f"--config.{k}={v}" for k, v in overrides.items()]
  start = time.perf_counter()
  rc = train_main(argv)
  took = time.perf_counter() - start
  captured = capsys.readouterr()
  lines = captured.err.strip().splitlines()
  assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"error: {key}"), captured.err
  assert "Traceback" not in captured.err + captured.out
  assert took < 5, f"{name}: {took:.1f} s"
  assert not workdir.exists()  # nothing synthesized, pretrained or trained


def test_bad_config_fails_fast_through_the_command_line(tmp_path):
  """The same through `python -m` (import time included, which is most of it)."""
  workdir = tmp_path / "fresh"
  proc = subprocess.run([sys.executable, "-m", "visregion_jax.train", "--config", DEMO,
                         f"--config.workdir={workdir}", "--config.region.fraction=0"],
                        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2 and proc.stderr.startswith("error: region.fraction"), proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1 and not workdir.exists()


def test_gguf_depth_from_the_header_alone(tmp_path):
  """Validation reads a GGUF's block count from its header (milliseconds, where the full
  reader takes seconds); gguf's own reader is the reference."""
  import gguf  # pylint: disable=import-outside-toplevel

  path = resolve_model_path(SMOLLM2_ALIAS)
  field = gguf.GGUFReader(path).fields["llama.block_count"]
  assert block_count(path) == int(field.parts[field.data[0]][0]) == 30
  truncated = tmp_path / "cut.gguf"
  with open(path, "rb") as f:
    truncated.write_bytes(f.read(64))  # ends before the keys
  with pytest.raises(VisRegionError, match="ends early"):
    block_count(str(truncated))
