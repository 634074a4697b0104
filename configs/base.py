"""Defaults every training config starts from (the paper's LLaVA-1.5 region recipe).

Task configs import `base_config()` and change what differs; every key that any
training run reads is here, so `--config.KEY=VALUE` overrides can be checked.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.workdir = "workdir"
  c.seed = 0
  c.distributed = False  # jax.distributed.initialize() (also implied by JAX_COORDINATOR_ADDRESS)
  c.dry_run = False      # print per-device memory for the mesh without allocating

  c.model = ml_collections.ConfigDict()
  c.model.init_from = ""           # llava-hf dir, or a decoder (HF dir, .gguf, smollm2-135m-instruct)
  c.model.vision_tower = ""        # HF CLIP/SigLIP dir, when init_from is a decoder
  c.model.architecture = ""        # dry run without local weights: a preset of dry_run.ARCHITECTURES
  c.model.pretrain_vision_tower = None  # demo: kwargs for vision_pretrain (tower written to vision_tower)
  c.model.projector_type = "mlp2x_gelu"
  c.model.feature_layers = (-2,)
  c.model.feature_strategy = "default"
  c.model.dtype = ""               # compute dtype; "" = fp32 on CPU, bf16 on accelerators
  c.model.remat = False

  c.region = ml_collections.ConfigDict()
  c.region.strategy = "uniform"
  c.region.fraction = 0.25
  c.region.layers = ()
  c.region.lora_rank = 128
  c.region.lora_alpha = 256.0
  c.region.lora_dropout = 0.05
  c.region.train_vision = False

  c.data = ml_collections.ConfigDict()
  c.data.train_json = ""
  c.data.eval_json = ""
  c.data.text_eval_json = ""
  c.data.image_root = ""
  c.data.tfds_dir = ""             # array_record data written by sources.write_tfds (pod path)
  c.data.synthetic_root = ""       # demo: write the synthetic image-QA set here first
  c.data.synthetic_sizes = None
  c.data.template = "vicuna_v1"
  c.data.max_length = 2048
  c.data.buckets = ()
  c.data.pad_to_square = True
  c.data.max_images_per_sample = 1
  c.data.num_workers = 4
  c.data.num_epochs = None

  c.train = ml_collections.ConfigDict()
  c.train.steps = 5198             # one epoch of LLaVA-665K at batch 128
  c.train.batch_size = 128
  c.train.grad_accum = 1
  c.train.lr = 2e-4                # region layers / LoRA
  c.train.projector_lr = 2e-5
  c.train.vision_lr = 2e-6
  c.train.weight_decay = 0.0
  c.train.warmup_ratio = 0.03
  c.train.max_grad_norm = 1.0
  c.train.log_every = 10
  c.train.checkpoint_every = 500
  c.train.max_bad_steps = 10       # stop after this many non-finite steps in a row
  c.train.export_hf = True

  c.eval = ml_collections.ConfigDict()
  c.eval.every = 0
  c.eval.at_start = False
  c.eval.at_end = True
  c.eval.num_samples = 64
  c.eval.max_new_tokens = 16
  c.eval.transformers_check = False  # after export: transformers answers a held-out question

  c.prune = ml_collections.ConfigDict()
  c.prune.model = ""               # HF dir to prune; "" = the training run's export WORKDIR/hf
  c.prune.k = 2                    # layers to remove
  c.prune.metric = "block_influence"  # or "angular"
  c.prune.block_size = 1
  c.prune.tokens = "all"           # "text" / "image": score on those tokens only
  c.prune.contiguous = False       # baseline: drop the lowest-scoring block of k layers
  c.prune.allow_region = False     # baseline: region layers may be removed too
  c.prune.calibration_samples = 64
  c.prune.calibration_json = ""    # "" = data.train_json
  c.prune.batch_size = 8
  c.prune.scores_json = ""         # reuse a scores.json of this model (same depth, block size, metric)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.tensor = 1
  return c

