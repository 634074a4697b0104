"""LLaVA-1.5-13B visual-region tuning: the 7B recipe on Vicuna-13B-v1.5.

Same recipe as llava15_7b_region.py (LoRA r=128 / alpha 256 / dropout 0.05 on every
linear of the region, lr 2e-4, projector lr 2e-5, batch 128, 5198 steps of
LLaVA-665K, cosine, 3% warmup, max length 2048, bf16, remat). The uniform 25% region
of 40 layers is 1, 5, 9, 13, 17, 23, 27, 31, 35, 39 (the paper does not publish its
40-layer list; see region.py).

Set before running (placeholders):
  model.init_from  the llava-hf directory of Vicuna-13B-v1.5 + CLIP ViT-L/14-336 + the
                   stage-1 projector: WORKDIR/hf of configs/stage1_projector.py run with
                   --config.model.init_from=/path/to/vicuna-13b-v1.5
  data.train_json, data.image_root, workdir  as in llava15_7b_region.py
"""

from visregion_jax import base_config


def get_config():
  c = base_config()  # its defaults are the recipe: region, LoRA, lrs, batch, schedule, mesh
  c.workdir = "/path/to/workdir/llava15_13b_region"
  c.model.init_from = "/path/to/llava-v1.5-13b-stage1-hf"
  c.model.architecture = "llava-1.5-13b"
  c.model.feature_layers = (-2,)
  c.model.feature_strategy = "default"
  c.model.dtype = "bfloat16"
  c.model.remat = True

  c.data.train_json = "/path/to/llava_v1_5_mix665k.json"
  c.data.image_root = "/path/to/llava_finetune_images"
  c.data.template = "vicuna_v1"
  c.data.max_length = 2048

  c.train.steps = 5198
  return c
