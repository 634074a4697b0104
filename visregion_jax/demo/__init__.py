"""The demo's scaffolding, run as the `hook` of configs/demo.py around training.

`prepare` writes the synthetic image-QA set (`demo.data_root`) and pretrains the
small CLIP-style tower that `model.vision_tower` then names (both cached in the
workdir); `finish` has transformers answer held-out questions with the export and
compares its answers with the JAX model's own.
"""

from visregion_jax.demo.synthetic import write_synthetic_dataset
from visregion_jax.demo.transformers_check import compare_with_transformers
from visregion_jax.demo.vision_pretrain import pretrain_vision_tower


def prepare(config, log) -> None:
  d = config.demo
  dataset = write_synthetic_dataset(d.data_root, seed=config.seed, **dict(d.data_sizes or {}))
  if d.get("tower"):
    pretrain_vision_tower(dataset, config.model.vision_tower, seed=config.seed, log=log, **dict(d.tower))


def finish(config, results, log) -> None:
  if not (config.demo.get("transformers_check") and results.get("hf_dir") and config.data.eval_json):
    return
  results["transformers_check"] = compare_with_transformers(config, results)
  check = results["transformers_check"]
  log(f"transformers, exported model: {check['agree']}/{check['count']} answers equal the JAX model's, "
      f"{check['correct']}/{check['count']} right; e.g. {check['examples'][0]}")
