"""The demo's first stage: a small CLIP-style vision tower pretrained on the synthetic images.

LLaVA freezes its vision tower, so the tower must already describe images: a
random one hands the projector noise and the LVLM learns nothing about them. No
pretrained tower this small exists (and nothing is downloaded), so the demo trains
one as a classifier of the synthetic set's answers (digit, count, colour, side)
on the train split only, and caches it as an HF CLIPVisionModel directory.

The heads read the mean of the very features LLaVA feeds its projector (hidden
state -2, "default" strategy: patches without the class token), so an LLM that
averages the image tokens already finds the answers there; the last layer, which
LLaVA never reads, stays untrained.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from PIL import Image

from visregion_jax.convert.vision import vision_tower_to_hf
from visregion_jax.data.image_processing import CLIP_MEAN, CLIP_STD, ImageProcessorConfig, preprocess
from visregion_jax.demo.install import install_directory
from visregion_jax.demo.synthetic import TASKS
from visregion_jax.errors import VisRegionError
from visregion_jax.evaluation import sample_task
from visregion_jax.models.vision import VisionConfig, VisionTower

FORMAT_VERSION = 1
FEATURE_LAYER = -2  # LLaVA's vision_feature_layer
FEATURE_STRATEGY = "default"
REPORT = "pretrain_report.json"
_EVAL_BATCH = 256
_NUM_LOGS = 10
_FLIPPABLE = np.asarray([task != "digits" for task in TASKS])  # upside down, still the answer


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
  """Everything that decides the trained tower, so equal settings may reuse a cached one."""
  image_size: int = 48
  patch_size: int = 8
  hidden_size: int = 128
  num_layers: int = 4
  num_heads: int = 4
  steps: int = 600
  batch_size: int = 64
  learning_rate: float = 2e-3
  seed: int = 0

  def __post_init__(self):
    minimums = dict(image_size=1, patch_size=1, hidden_size=1, num_layers=2, num_heads=1,
                    steps=1, batch_size=1, seed=0)
    for name, minimum in minimums.items():
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise VisRegionError(name, f"expected an integer >= {minimum}, got {value!r}")
    if self.image_size % self.patch_size:
      raise VisRegionError("image_size", f"expected a multiple of patch_size={self.patch_size}, "
                           f"got {self.image_size}")
    if isinstance(self.learning_rate, bool) or not (
        isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < float("inf")):
      raise VisRegionError("learning_rate", f"expected a positive number, "
                           f"got {self.learning_rate!r}")

  def vision_config(self) -> VisionConfig:
    return VisionConfig(kind="clip", hidden_size=self.hidden_size,
                        intermediate_size=4 * self.hidden_size, num_layers=self.num_layers,
                        num_heads=self.num_heads, image_size=self.image_size,
                        patch_size=self.patch_size, layer_norm_eps=1e-5, hidden_act="quick_gelu")

  def processor(self) -> ImageProcessorConfig:
    return ImageProcessorConfig(kind="clip", size=self.image_size, crop_size=self.image_size,
                                image_mean=CLIP_MEAN, image_std=CLIP_STD)


def _sincos_positions(config: VisionConfig) -> jnp.ndarray:
  """MAE's fixed 2-D sine-cosine table (zeros for the class token), as the initial value.

  CLIP's random init (std 0.02) makes the patches' places far fainter than their
  content, and a short run then never learns the layout (left / right stayed at chance).
  """
  grid = config.image_size // config.patch_size
  quarter = config.hidden_size // 4
  omega = 1.0 / 10000 ** (np.arange(quarter) / quarter)
  rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
  table = np.concatenate([f(c.reshape(-1, 1) * omega) for c in (rows, cols)
                          for f in (np.sin, np.cos)], axis=1)
  table = np.pad(table, ((1, 0), (0, config.hidden_size - 4 * quarter)))
  return jnp.asarray(table, jnp.dtype(config.param_dtype))


class _Classifier(nnx.Module):
  """The tower plus one linear head per task over its mean-pooled LLaVA features.

  The heads are one Linear over every task's classes; `_masked` keeps a sample's
  logits to its own task's columns, which is the same as separate heads.
  """

  def __init__(self, config: VisionConfig, num_classes: int, rngs: nnx.Rngs):
    self.tower = VisionTower(config, rngs=rngs)
    self.tower.position_embedding[...] = _sincos_positions(config)
    self.norm = nnx.LayerNorm(config.hidden_size, rngs=rngs)
    self.heads = nnx.Linear(config.hidden_size, num_classes, rngs=rngs)

  def __call__(self, pixels: jnp.ndarray) -> jnp.ndarray:
    features = self.tower.features(pixels, (FEATURE_LAYER,), FEATURE_STRATEGY)
    return self.heads(self.norm(features.mean(axis=1)))


def _masked(logits: jnp.ndarray, tasks: jnp.ndarray, class_tasks: jnp.ndarray) -> jnp.ndarray:
  """Other tasks' columns pushed to -1e9 (finite, so the softmax gradient stays clean)."""
  return jnp.where(class_tasks[None, :] == tasks[:, None], logits, -1e9)


def _read_json(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _load_split(dataset: dict, split: str, processor: ImageProcessorConfig) -> tuple:
  """(pixels [N, H, W, 3], tasks, answers) of the split's image-task samples."""
  samples = _read_json(dataset[split])
  if not isinstance(samples, list):
    raise VisRegionError(dataset[split], "expected a JSON list of samples")
  samples = [s for s in samples if sample_task(s) in TASKS and "image" in s]
  if not samples:
    raise VisRegionError(dataset[split], f"expected samples of the tasks {list(TASKS)}")
  images = []
  for s in samples:
    path = os.path.join(dataset["root"], s["image"])
    try:
      with Image.open(path) as image:
        images.append(image.convert("RGB"))
    except OSError as e:
      raise VisRegionError(path, f"expected a readable image ({e})") from None
  tasks = [sample_task(s) for s in samples]
  answers = [s["conversations"][-1]["value"] for s in samples]
  return preprocess(images, processor, pad_to_square=True), tasks, answers


def _labels(tasks: list, answers: list, classes: list, where: str) -> tuple:
  """(task index [N], class index [N]) into `classes`, the (task, answer) pairs."""
  index = {c: i for i, c in enumerate(classes)}
  unknown = sorted({(t, a) for t, a in zip(tasks, answers) if (t, a) not in index})
  if unknown:
    raise VisRegionError(where, f"expected answers seen in the train split, got {unknown[:3]}")
  return (np.asarray([TASKS.index(t) for t in tasks], np.int32),
          np.asarray([index[(t, a)] for t, a in zip(tasks, answers)], np.int32))


def _accuracy(predict: Callable, pixels: np.ndarray, tasks: np.ndarray,
              labels: np.ndarray) -> dict:
  """Per-task accuracy; batches are padded to one shape so `predict` compiles once."""
  hits = []
  for start in range(0, len(pixels), _EVAL_BATCH):
    x, t = pixels[start:start + _EVAL_BATCH], tasks[start:start + _EVAL_BATCH]
    pad = _EVAL_BATCH - len(x)
    guess = predict(np.pad(x, ((0, pad), (0, 0), (0, 0), (0, 0))), np.pad(t, (0, pad)))
    hits.append(np.asarray(guess)[:len(x)] == labels[start:start + _EVAL_BATCH])
  hits = np.concatenate(hits)
  return {task: round(float(hits[tasks == i].mean()), 4)
          for i, task in enumerate(TASKS) if (tasks == i).any()}


def _fit(model: _Classifier, class_tasks: jnp.ndarray, data: tuple, settings: PretrainSettings,
         log: Callable) -> float:
  """AdamW with warmup and cosine decay on the per-task cross-entropy; returns the last loss.

  The parameters travel as an nnx State through one jitted step and are written
  back into `model` at the end. Non-digit images are flipped upside down half the
  time: their answers survive it, and the count task otherwise memorises the set.
  """
  pixels, tasks, labels = data
  steps, batch_size = settings.steps, settings.batch_size
  graphdef, params = nnx.split(model)
  schedule = optax.warmup_cosine_decay_schedule(0.0, settings.learning_rate,
                                                max(1, steps // 20), steps)
  decay = jax.tree.map(lambda p: p.ndim >= 2, params)  # no decay on norms and biases
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(schedule, weight_decay=0.05, mask=decay))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, t, y):
    def loss_fn(params):
      logits = _masked(nnx.merge(graphdef, params)(x), t, class_tasks)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(settings.seed)
  order, used = rng.permutation(len(pixels)), 0
  every = max(1, steps // _NUM_LOGS)
  start = time.perf_counter()
  for i in range(1, steps + 1):
    if used + batch_size > len(order):  # a new epoch; the last partial batch is dropped
      order, used = rng.permutation(len(pixels)), 0
    batch = order[used:used + batch_size]
    used += batch_size
    flip = (rng.random(len(batch)) < 0.5) & _FLIPPABLE[tasks[batch]]
    x = np.where(flip[:, None, None, None], pixels[batch][:, ::-1], pixels[batch])
    params, opt_state, loss = step(params, opt_state, x, tasks[batch], labels[batch])
    if i % every == 0 or i == steps:
      log(f"vision pretrain: step {i}/{steps} loss {float(loss):.4f} "
          f"({time.perf_counter() - start:.1f}s)")
  nnx.update(model, params)
  return float(loss)


def train_vision_tower(dataset: dict, settings: PretrainSettings,
                       log: Callable = print) -> tuple[VisionTower, dict]:
  """(tower, report): a tower trained on `dataset`'s train split, scored on train and eval.

  `dataset` is what `write_synthetic_dataset` returns. The report holds each
  task's answer classes, per-task accuracies, the last loss and the seconds taken.
  Deterministic for given settings and data.
  """
  processor = settings.processor()
  train_pixels, train_tasks, train_answers = _load_split(dataset, "train", processor)
  eval_pixels, eval_tasks, eval_answers = _load_split(dataset, "eval", processor)
  classes = sorted(set(zip(train_tasks, train_answers)), key=lambda c: (TASKS.index(c[0]), c[1]))
  train = (train_pixels, *_labels(train_tasks, train_answers, classes, dataset["train"]))
  held_out = (eval_pixels, *_labels(eval_tasks, eval_answers, classes, dataset["eval"]))
  class_tasks = jnp.asarray([TASKS.index(t) for t, _ in classes], jnp.int32)

  model = _Classifier(settings.vision_config(), len(classes), nnx.Rngs(settings.seed))
  start = time.perf_counter()
  loss = _fit(model, class_tasks, train, settings, log)
  predict = nnx.jit(lambda m, x, t: jnp.argmax(_masked(m(x), t, class_tasks), axis=-1))
  accuracy = {split: _accuracy(lambda x, t: predict(model, x, t), *data)
              for split, data in (("train", train), ("eval", held_out))}
  for split, per_task in accuracy.items():
    log(f"vision pretrain: {split} accuracy " +
        " ".join(f"{task} {acc:.3f}" for task, acc in per_task.items()))
  report = {"classes": {t: [a for u, a in classes if u == t] for t in TASKS if t in train_tasks},
            "accuracy": accuracy, "final_loss": round(loss, 4),
            "seconds": round(time.perf_counter() - start, 1)}
  return model.tower, report


def _report_params(out_dir: str):
  """The settings a pretrained tower in `out_dir` was made with (None if there is none)."""
  report = _read_json(os.path.join(out_dir, REPORT))
  return report.get("params") if isinstance(report, dict) else None


def _check_replaceable(out_dir: str) -> bool:
  """Whether `out_dir` holds something to replace; raises when that is not a pretrained tower."""
  if not (os.path.isdir(out_dir) and os.listdir(out_dir)):
    return False
  if not isinstance(_read_json(os.path.join(out_dir, REPORT)), dict):
    raise VisRegionError(out_dir, "expected an empty directory or a pretrained vision tower "
                         "(it holds other files; refusing to overwrite them)")
  return True


def pretrain_vision_tower(dataset: dict, out_dir: str, *, image_size: int = 48,
                          patch_size: int = 8, hidden_size: int = 128, num_layers: int = 4,
                          num_heads: int = 4, steps: int = 600, batch_size: int = 64,
                          learning_rate: float = 2e-3, seed: int = 0,
                          log: Callable = print) -> str:
  """Trains a tower on `dataset` (as `write_synthetic_dataset` returns it) into `out_dir`.

  `out_dir` becomes an HF CLIPVisionModel directory (config.json, safetensors,
  preprocessor_config.json) plus `pretrain_report.json`: the settings, the
  dataset's manifest hash and `train_vision_tower`'s report. When the report there
  already names these settings and this dataset, nothing runs. The directory is
  built beside `out_dir` and renamed into place, so an interrupted run leaves no
  tower behind. Returns `out_dir` as an absolute path.
  """
  settings = PretrainSettings(image_size=image_size, patch_size=patch_size,
                              hidden_size=hidden_size, num_layers=num_layers,
                              num_heads=num_heads, steps=steps, batch_size=batch_size,
                              learning_rate=learning_rate, seed=seed)
  out_dir = os.path.abspath(out_dir)
  try:
    with open(dataset["manifest"], "rb") as f:
      dataset_id = hashlib.sha256(f.read()).hexdigest()
  except OSError as e:
    raise VisRegionError(dataset["manifest"], f"expected a dataset manifest ({e})") from None
  params = {"format_version": FORMAT_VERSION, "dataset_manifest_sha256": dataset_id,
            "feature_layer": FEATURE_LAYER, "feature_strategy": FEATURE_STRATEGY,
            **dataclasses.asdict(settings)}
  if _report_params(out_dir) == params:
    log(f"vision pretrain: cached in {out_dir}")
    return out_dir
  _check_replaceable(out_dir)  # before training, not after

  tower, report = train_vision_tower(dataset, settings, log)
  os.makedirs(os.path.dirname(out_dir), exist_ok=True)
  tmp = tempfile.mkdtemp(dir=os.path.dirname(out_dir), prefix=f".{os.path.basename(out_dir)}.tmp-")
  try:
    os.chmod(tmp, 0o755)  # mkdtemp's 0o700 would make the tower private once renamed
    vision_tower_to_hf(tower, tmp)
    with open(os.path.join(tmp, "preprocessor_config.json"), "w", encoding="utf-8") as f:
      json.dump(settings.processor().to_hf_dict(), f, indent=2, sort_keys=True)
    with open(os.path.join(tmp, REPORT), "w", encoding="utf-8") as f:
      json.dump({"params": params, **report}, f, indent=2)
      f.write("\n")
    install_directory(tmp, out_dir, holds_older=_check_replaceable,
                      holds_same=lambda path: _report_params(path) == params)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  log(f"vision pretrain: saved to {out_dir}")
  return out_dir
