"""Bunny-Phi3-mini-4B-V (Bunny-v1.0-4B) visual-region tuning.

Phi-3-mini-4k-instruct + SigLIP-so400m-patch14-384 + mlp2x_gelu, with Bunny's
"recipe-1" settings (LoRA r=128 / alpha 256, lr 2e-4, projector lr 2e-5, global
batch 128, one epoch of Bunny-695K, cosine, 3% warmup, max length 4096, images
padded to square) restricted to the uniform 25% region: layers 1, 5, 9, 13, 19, 23,
27, 31 of 32. SigLIP features: hidden state -2, all 729 tokens. Template `phi3`
(Phi-3's chat format).

Set before running (placeholders):
  model.init_from  the llava-hf directory of the stage-1 model: WORKDIR/hf of
                   configs/stage1_projector.py run with the Phi-3-mini-4k-instruct decoder
                   and the SigLIP vision model (see its docstring)
  data.train_json  bunny_695k.json; data.image_root its image folder
  train.steps      ceil(samples / 128) for one epoch: 5430 assumes 695,000 samples
  workdir
"""

from visregion_jax import base_config


def get_config():
  c = base_config()  # its defaults are the recipe: region, LoRA, lrs, batch, schedule, mesh
  c.workdir = "/path/to/workdir/bunny_phi3_mini_region"
  c.model.init_from = "/path/to/bunny-phi3-mini-stage1-hf"
  c.model.architecture = "bunny-phi3-mini"
  c.model.feature_layers = (-2,)
  c.model.feature_strategy = "full"
  c.model.dtype = "bfloat16"
  c.model.remat = True

  c.data.train_json = "/path/to/bunny_695k.json"
  c.data.image_root = "/path/to/bunny_finetune_images"
  c.data.template = "phi3"
  c.data.max_length = 4096

  c.train.steps = 5430
  # Micro-batches of 32 (4 per device on 8 devices, Bunny's own split): 4096-token
  # sequences do not fit 16 per device (see the dry run). On a mesh with more than 32
  # batch shards lower it: batch_size / grad_accum must stay a multiple of data * fsdp.
  c.train.grad_accum = 4
  return c
