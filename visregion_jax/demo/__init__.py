"""The demo's scaffolding, run as the `hook` of configs/demo.py around training.

`prepare` writes the synthetic image-QA set (`demo.data_root`), its held-out image
questions again in GQA's LLaVA evaluation layout (`demo.data_root`/gqa, for the
benchmark path: `eval.tasks=gqa`), and pretrains the small CLIP-style tower that
`model.vision_tower` then names (all cached in the workdir); `finish` has transformers answer held-out questions with the export and
compares its answers with the JAX model's own.
"""

import os

from visregion_jax.demo.gqa_layout import write_gqa_layout
from visregion_jax.demo.synthetic import write_synthetic_dataset
from visregion_jax.demo.transformers_check import compare_with_transformers
from visregion_jax.demo.vision_pretrain import pretrain_vision_tower


def provides(config) -> tuple:
  """The config keys whose paths `prepare` writes: the data set's files where the config
  names them inside `demo.data_root`, and the pretrained tower."""
  root = os.path.abspath(config.demo.data_root)
  written = {"data.train_json": os.path.join(root, "train.json"), "data.eval_json": os.path.join(root, "eval.json"),
             "data.text_eval_json": os.path.join(root, "text_eval.json"), "data.image_root": root}
  d = config.data
  named = {"data.train_json": d.train_json, "data.eval_json": d.eval_json,
           "data.text_eval_json": d.text_eval_json, "data.image_root": d.image_root}
  keys = [key for key, path in written.items() if named[key] and os.path.abspath(named[key]) == path]
  if config.eval.data.gqa and os.path.abspath(config.eval.data.gqa) == os.path.join(root, "gqa"):
    keys.append("eval.data.gqa")
  return tuple(keys + (["model.vision_tower"] if config.demo.get("tower") else []))


def prepare(config, log) -> None:
  d = config.demo
  dataset = write_synthetic_dataset(d.data_root, seed=config.seed, **dict(d.data_sizes or {}))
  gqa = os.path.join(d.data_root, "gqa")
  if not os.path.isdir(gqa):
    write_gqa_layout(os.path.join(d.data_root, "eval.json"), d.data_root, gqa)
  if d.get("tower"):
    pretrain_vision_tower(dataset, config.model.vision_tower, seed=config.seed, log=log, **dict(d.tower))


def finish(config, results, log) -> None:
  if not (config.demo.get("transformers_check") and results.get("hf_dir") and config.data.eval_json):
    return
  results["transformers_check"] = compare_with_transformers(config, results)
  check = results["transformers_check"]
  log(f"transformers, exported model: {check['agree']}/{check['count']} answers equal the JAX model's, "
      f"{check['correct']}/{check['count']} right; e.g. {check['examples'][0]}")
