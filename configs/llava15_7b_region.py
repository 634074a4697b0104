"""LLaVA-1.5-7B visual-region tuning: the paper's main recipe.

Vicuna-7B-v1.5 + CLIP ViT-L/14-336 + mlp2x_gelu projector. LoRA (r=128, alpha=256,
dropout 0.05) on all seven linears (q, k, v, o, gate, up, down) of the uniform 25%
region, layers 1, 5, 9, 13, 19, 23, 27, 31 of 32; the projector is tuned fully at
its own learning rate; the vision tower and every other parameter stay frozen. One
epoch of LLaVA-665K (665,298 samples / 128 = 5198 steps), cosine with 3% warmup,
bf16 compute, each decoder layer rematerialized in the backward pass.

Set before running (the paths below are placeholders):
  model.init_from  an llava-hf directory (config.json, safetensors, tokenizer) holding
                   Vicuna-7B-v1.5, CLIP ViT-L/14-336 and the stage-1 pretrained projector:
                   WORKDIR/hf as written by a configs/stage1_projector.py run. Its
                   config.json decides the vision features (hidden state -2, patches
                   without CLS); the model.* feature keys below only apply when
                   init_from is a plain decoder joined with model.vision_tower (then the
                   projector starts untrained, which is not this recipe).
  data.train_json  llava_v1_5_mix665k.json
  data.image_root  the folder its image paths are relative to (coco/, gqa/, ocr_vqa/,
                   textvqa/, vg/)
  workdir          where checkpoints, metrics.jsonl and the merged HF export go
`--config.dry_run=True` prints the per-device memory of this recipe on the current
devices without loading weights (model.architecture describes the model while
init_from is not a local directory).
"""

from visregion_jax import base_config


def get_config():
  c = base_config()  # its defaults are the recipe: region, LoRA, lrs, batch, schedule, mesh
  c.workdir = "/path/to/workdir/llava15_7b_region"
  c.model.init_from = "/path/to/llava-v1.5-7b-stage1-hf"
  c.model.architecture = "llava-1.5-7b"
  c.model.feature_layers = (-2,)
  c.model.feature_strategy = "default"  # patch features, CLS dropped
  c.model.dtype = "bfloat16"
  c.model.remat = True

  c.data.train_json = "/path/to/llava_v1_5_mix665k.json"
  c.data.image_root = "/path/to/llava_finetune_images"
  c.data.template = "vicuna_v1"
  c.data.max_length = 2048

  c.train.steps = 5198
  return c
