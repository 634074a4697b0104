"""Stage 1 (feature alignment): only the projector learns, on image-caption pairs.

LLaVA-1.5's pretraining: Vicuna-7B-v1.5 and CLIP ViT-L/14-336 frozen, a fresh
mlp2x_gelu projector trained at lr 1e-3 with batch 256 for one epoch of LCS-558K
(558,128 captions / 256 = 2181 steps), the `plain` template (image tokens, caption,
"\n"), images resized without padding to square, cosine with 3% warmup, bf16, remat.
No decoder layer is trained (region.strategy "none"), but the gradient still flows
back through all of them to the projector.

The run ends by exporting WORKDIR/hf: an llava-hf directory (decoder, tower,
projector, tokenizer with <image>) that the region configs take as model.init_from.

Set before running (placeholders):
  model.init_from     the HF directory of the decoder (lmsys/vicuna-7b-v1.5; for 13B
                      vicuna-13b-v1.5)
  model.vision_tower  an HF CLIPVisionModel directory of openai/clip-vit-large-patch14-336
                      (config.json with model_type clip_vision_model: save the vision
                      model alone, e.g. transformers.CLIPVisionModel.from_pretrained(...)
                      .save_pretrained(dir), plus its preprocessor_config.json)
  data.train_json     blip_laion_cc_sbu_558k.json; data.image_root its image folder
  workdir
For Bunny, use the Bunny decoder, the SigLIP-so400m-384 vision model,
--config.model.feature_strategy=full, --config.model.architecture=bunny-llama3-8b (or
bunny-phi3-mini) and Bunny's pretraining captions (bunny_pretrain_laion_2m.json).
"""

from visregion_jax import base_config


def get_config():
  c = base_config()  # schedule, weight decay and mesh of the recipe
  c.workdir = "/path/to/workdir/stage1_projector"
  c.model.init_from = "/path/to/vicuna-7b-v1.5"
  c.model.vision_tower = "/path/to/clip-vit-large-patch14-336-vision"
  c.model.architecture = "llava-1.5-7b"
  c.model.projector_type = "mlp2x_gelu"
  c.model.feature_layers = (-2,)
  c.model.feature_strategy = "default"
  c.model.dtype = "bfloat16"
  c.model.remat = True

  c.region.strategy = "none"
  c.region.lora_rank = 0

  c.data.train_json = "/path/to/blip_laion_cc_sbu_558k.json"
  c.data.image_root = "/path/to/llava_pretrain_images"
  c.data.template = "plain"
  c.data.max_length = 2048
  c.data.pad_to_square = False

  c.train.steps = 2181
  c.train.batch_size = 256
  c.train.projector_lr = 1e-3  # the only trainable group
  return c
