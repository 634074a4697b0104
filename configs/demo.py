"""The demo: SmolLM2-135M-Instruct learns to see, on this CPU, in a few minutes.

The demo's hook (`visregion_jax.demo`) first writes the synthetic image-QA set and
pretrains a small CLIP-style tower on its images (both cached in the workdir); the
projector and the uniform 25% region of SmolLM2's 30 layers are then trained with the
tower frozen, and after the export transformers answers held-out questions with it.
"""

import ml_collections

from visregion_jax import base_config


def get_config():
  c = base_config()
  c.workdir = "demo_workdir"
  c.hook = "visregion_jax.demo"
  c.demo = ml_collections.ConfigDict()
  c.demo.data_root = "{workdir}/data"                 # the synthetic image-QA set is written here
  c.demo.data_sizes = dict(num_train=2000, num_eval=200, image_size=64)
  c.demo.tower = dict(image_size=48, patch_size=8, hidden_size=128, num_layers=4, num_heads=4,
                      steps=600, batch_size=64, learning_rate=2e-3)  # pretraining of model.vision_tower
  c.demo.transformers_check = True                    # transformers answers with the export
  c.model.init_from = "smollm2-135m-instruct"
  c.model.vision_tower = "{workdir}/vision_tower"
  c.data.train_json = "{workdir}/data/train.json"
  c.data.eval_json = "{workdir}/data/eval.json"
  c.data.text_eval_json = "{workdir}/data/text_eval.json"
  c.data.image_root = "{workdir}/data"
  c.data.template = "tokenizer"   # SmolLM2's own chat template (chatml)
  c.data.max_length = 128
  c.data.buckets = (96, 128)
  c.data.num_workers = 0
  c.region.strategy = "uniform"
  c.region.lora_rank = 0          # full update of the 8 region layers
  c.train.steps = 100
  c.train.batch_size = 8
  c.train.lr = 1e-4
  c.train.projector_lr = 1e-3     # the demo's projector starts random (no stage-1 pretraining)
  c.train.log_every = 10
  c.train.checkpoint_every = 50
  c.eval.at_start = True
  c.eval.num_samples = 64
  c.eval.max_new_tokens = 8
  c.eval.tasks = "gqa"            # the same 64 questions through the benchmark path (GQA's layout,
  c.eval.data.gqa = "{workdir}/data/gqa"  # LLaVA's short-answer prompt, lmms-eval's exact match)
  c.eval.limit = 64
  return c
