"""Bunny-Llama-3-8B-V visual-region tuning.

Llama-3-8B-Instruct + SigLIP-so400m-patch14-384 + mlp2x_gelu, with Bunny's
visual-instruction-tuning settings (its "recipe-1": LoRA r=128 / alpha 256, lr 2e-4,
projector lr 2e-5, global batch 128, one epoch of Bunny-695K, cosine, 3% warmup, max
length 2048, images padded to square) restricted to the uniform 25% region: layers
1, 5, 9, 13, 19, 23, 27, 31 of 32. SigLIP features are hidden state -2 with all 729
tokens (SigLIP has no CLS), as Bunny's tower computes them. The template is
`llama3` (Llama-3 header format); Bunny's own code trains with a vicuna-style
"USER: / ASSISTANT:" format ended by <|end_of_text|> instead.

Set before running (placeholders):
  model.init_from  the llava-hf directory of the stage-1 model: WORKDIR/hf of
                   configs/stage1_projector.py run with the Llama-3-8B-Instruct decoder
                   and the SigLIP vision model (see its docstring). Its config.json
                   decides the vision features.
  data.train_json  bunny_695k.json; data.image_root its image folder
  train.steps      ceil(samples / 128) for one epoch: 5430 assumes 695,000 samples
  workdir
"""

from visregion_jax import base_config


def get_config():
  c = base_config()  # its defaults are the recipe: region, LoRA, lrs, batch, schedule, mesh
  c.workdir = "/path/to/workdir/bunny_llama3_8b_region"
  c.model.init_from = "/path/to/bunny-llama3-8b-stage1-hf"
  c.model.architecture = "bunny-llama3-8b"
  c.model.feature_layers = (-2,)
  c.model.feature_strategy = "full"
  c.model.dtype = "bfloat16"
  c.model.remat = True

  c.data.train_json = "/path/to/bunny_695k.json"
  c.data.image_root = "/path/to/bunny_finetune_images"
  c.data.template = "llama3"
  c.data.max_length = 2048

  c.train.steps = 5430
  return c
