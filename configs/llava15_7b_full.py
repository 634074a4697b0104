"""LLaVA-1.5-7B full fine-tuning: the baseline the region recipe is compared against.

Every decoder layer is updated fully (no LoRA) at LLaVA-1.5's full fine-tuning
learning rate 2e-5, the projector at the same rate; data, schedule, batch and
precision as llava15_7b_region.py. One difference from LLaVA's own full fine-tuning:
the labeler keeps the token embeddings, the final norm and the LM head frozen
(region.label_of trains decoder layers and the projector only).

Set before running (placeholders): model.init_from (the stage-1 llava-hf directory),
data.train_json, data.image_root, workdir, as in llava15_7b_region.py. Run
`--config.dry_run=True` first: the float32 master copy, AdamW moments and gradients
of 6.5B parameters need a mesh that shards them (fsdp over every device).
"""

from visregion_jax import base_config


def get_config():
  c = base_config()  # schedule, weight decay and mesh of the recipe
  c.workdir = "/path/to/workdir/llava15_7b_full"
  c.model.init_from = "/path/to/llava-v1.5-7b-stage1-hf"
  c.model.architecture = "llava-1.5-7b"
  c.model.vision_tower = ""
  c.model.projector_type = "mlp2x_gelu"
  c.model.feature_layers = (-2,)
  c.model.feature_strategy = "default"
  c.model.dtype = "bfloat16"
  c.model.remat = True

  c.region.strategy = "full"
  c.region.lora_rank = 0

  c.data.train_json = "/path/to/llava_v1_5_mix665k.json"
  c.data.image_root = "/path/to/llava_finetune_images"
  c.data.template = "vicuna_v1"
  c.data.max_length = 2048
  c.data.pad_to_square = True

  c.train.steps = 5198
  c.train.lr = 2e-5
  return c
