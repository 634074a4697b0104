"""Two training steps of a tiny LVLM per (mesh, attention), for tests/test_attention_training.py.

Runs in a fresh process started with 8 simulated CPU devices (the device count is fixed
when jax starts): a one-device mesh (the first device) and the 2x2x2 data x fsdp x
tensor mesh, each with model.attention "xla", "splash" and "gpu" (the Pallas kernels in
interpret mode; "gpu" runs Pallas's GPU flash kernel there, cuDNN needing a GPU); the
kernels on one device only with `--one-device-kernels`. The
step is the library's jitted training step (train/step.py) over parameters placed as
the training loop places them, called inside `jax.set_mesh` as the loop calls it, on
packed rows with images, padding and a length that is not a block multiple. Prints one
line `RESULT {json}` with the losses, the trainable parameters after the steps and
whether the step's jaxpr holds a shard_map.
"""

import json
import sys

import jax
import numpy as np
import optax
from flax import nnx

from visregion_jax import sharding
from visregion_jax.data.tokenize import IGNORE_INDEX
from visregion_jax.models.attention_choice import set_attention
from visregion_jax.models.config import DecoderConfig
from visregion_jax.models.lvlm import LVLM, LVLMConfig
from visregion_jax.models.vision import VisionConfig
from visregion_jax.plan import TrainingPlan
from visregion_jax.train.step import make_train_step

VOCAB, IMAGE_TOKEN, ROWS, LENGTH = 96, 95, 4, 136
TEXT = DecoderConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=8)
VISION = VisionConfig(kind="clip", hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      image_size=14, patch_size=7)
CONFIG = LVLMConfig(text=TEXT, vision=VISION, image_token_id=IMAGE_TOKEN)
PLAN = TrainingPlan(region_layers=(1,))  # layer 1 fully updated, the projector trained


def batch(seed: int) -> dict:
  """ROWS packed rows: a sample with the row's image, text-only samples, padding at the end."""
  rng = np.random.RandomState(seed)
  ids = np.zeros((ROWS, LENGTH), np.int32)
  seg = np.zeros((ROWS, LENGTH), np.int32)
  for r in range(ROWS):
    start = 0
    for s, n in enumerate((40 + 7 * r, 50, 30 - 5 * r)):
      ids[r, start:start + n] = rng.randint(1, IMAGE_TOKEN, size=n)
      seg[r, start:start + n] = s + 1
      start += n
    ids[r, 2:2 + CONFIG.num_image_tokens] = IMAGE_TOKEN  # the first sample's image
  labels = np.where((seg > 0) & (ids != IMAGE_TOKEN), ids, IGNORE_INDEX)
  labels[:, :10] = IGNORE_INDEX
  pixels = rng.normal(size=(ROWS, 14, 14, 3)).astype(np.float32)
  return {"input_ids": ids, "labels": labels, "attention_mask": (seg > 0).astype(np.int32), "segment_ids": seg,
          "pixel_values": pixels, "image_mask": np.ones((ROWS,), bool)}


def two_steps(mesh, attention: str) -> dict:
  model = LVLM(CONFIG, rngs=nnx.Rngs(0))
  set_attention(model, attention, interpret=True)
  PLAN.prepare(model, seed=0)
  graphdef, params, frozen, rest = PLAN.split(model)
  params = jax.device_put(params, sharding.state_shardings(params, mesh))
  frozen = jax.device_put(frozen, sharding.state_shardings(frozen, mesh))
  rest = jax.device_put(rest, sharding.replicated(mesh))
  tx = optax.adamw(1e-3)
  opt_state = tx.init(params)
  step = jax.jit(make_train_step(graphdef, tx, accum_steps=1, seed=0))
  losses = []
  with jax.set_mesh(mesh):
    jaxpr = str(jax.make_jaxpr(step)(params, frozen, rest, opt_state, sharding.global_batch(batch(0), mesh), 0))
    for i in range(2):
      placed = sharding.global_batch(batch(i), mesh)
      params, rest, opt_state, metrics = step(params, frozen, rest, opt_state, placed, i)
      losses.append(float(metrics["loss"]))
  flat = {"/".join(map(str, path)): np.asarray(v.get_value()).tolist() for path, v in nnx.to_flat_state(params)}
  return {"losses": losses, "params": flat, "shard_map": "shard_map" in jaxpr}


def main(argv: list) -> None:
  """`--one-device-kernels` adds the kernels' steps on one device (the slow tests compare
  them); by default one device runs "xla" only, the reference the 8-device steps meet."""
  one_device = ("xla", "splash", "gpu") if "--one-device-kernels" in argv else ("xla",)
  meshes = {"1": (sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]), one_device),
            "8": (sharding.make_mesh(2, 2, 2), ("xla", "splash", "gpu"))}
  result = {name: {attention: two_steps(mesh, attention) for attention in attentions}
            for name, (mesh, attentions) in meshes.items()}
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
