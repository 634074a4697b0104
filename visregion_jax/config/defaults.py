"""Defaults every training config starts from (the paper's LLaVA-1.5 region recipe).

One table holds each key's default and its one-line meaning: `base_config()` builds
the ConfigDict from it (so `--config.KEY=VALUE` overrides can be checked against
every key a run reads) and `--help` prints it. A task config calls `base_config()`
and changes what differs:

    from visregion_jax import base_config

    def get_config():
      c = base_config()
      c.model.init_from = "smollm2-135m-instruct"
      return c
"""

import ml_collections

# (key, default, meaning), in the order --help lists them.
KEYS = (
    ("workdir", "workdir", "checkpoints, metrics.jsonl, exports and reports go here"),
    ("seed", 0, "all randomness (init, shuffling, dropout) derives from it"),
    ("distributed", False, "jax.distributed.initialize() (also implied by JAX_COORDINATOR_ADDRESS)"),
    ("dry_run", False, "print per-device memory for the mesh without loading weights"),
    ("hook", "", "module with prepare(config, log) / finish(config, results, log), run around "
     "training (the demo: visregion_jax.demo)"),

    ("model.init_from", "", "llava-hf dir, or a decoder: HF dir, .gguf, smollm2-135m-instruct"),
    ("model.vision_tower", "", "HF CLIP/SigLIP dir joined to a decoder init_from"),
    ("model.architecture", "", "dry run without local weights: a preset of model_spec.PRESETS"),
    ("model.projector_type", "mlp2x_gelu", "linear or mlpNx_gelu (a new projector only)"),
    ("model.feature_layers", (-2,), "vision tower layers whose features feed the projector"),
    ("model.feature_strategy", "default", "default (patches, no CLS) or full"),
    ("model.dtype", "", "compute dtype; empty = float32 on CPU, bfloat16 on accelerators"),
    ("model.remat", False, "recompute each decoder layer in the backward pass (less memory)"),
    ("model.loss_tiles", 0, "the loss's logits in tiles of a row's tokens, one tile at a time: 0 = when a "
     "micro-batch's fp32 logits exceed 64 MiB per device (tiles of at most that), 1 = never, N = N tiles"),
    ("model.attention", "auto", "auto (splash on TPU, cuDNN / Pallas flash on GPU, xla on CPU), xla (dense "
     "T x T scores), splash or gpu (fused kernels: no T x T matrix)"),
    ("model.attention_interpret", False, "run the Pallas attention kernels in interpret mode (CPU tests)"),

    ("region.strategy", "uniform", "uniform (the paper's spread), explicit, first, last, full, none, or scored "
     "(by a probe of the model on training data: block influence on image tokens)"),
    ("region.fraction", 0.25, "share of decoder layers in the region"),
    ("region.layers", (), "layer indices for strategy explicit"),
    ("region.probe_samples", 64, "scored: training samples the probe runs on (in the seed's order)"),
    ("region.scored_halves", True, "scored: as many layers from each half of the decoder as uniform takes"),
    ("region.lora_rank", 128, "0: region layers fully updated; > 0: LoRA of this rank on their linears"),
    ("region.lora_alpha", 256.0, "LoRA scale numerator (scale = alpha / rank)"),
    ("region.lora_dropout", 0.05, "dropout on the LoRA input"),
    ("region.train_vision", False, "also train the vision tower (at train.vision_lr)"),
    ("region.train_projector", True, "train the projector (at train.projector_lr); pruning's healing turns it off"),

    ("data.train_json", "", "LLaVA-format training conversations"),
    ("data.eval_json", "", "held-out image QA for answer accuracy and eval loss"),
    ("data.text_eval_json", "", "held-out text-only conversations for perplexity"),
    ("data.image_root", "", "image paths in the JSON files resolve inside this directory"),
    ("data.tfds_dir", "", "array_record data written by data.sources.write_tfds (pod path)"),
    ("data.template", "vicuna_v1", "chat template: vicuna_v1, llama3, phi3, plain or tokenizer"),
    ("data.max_length", 2048, "tokens per sample (longer samples are truncated and counted)"),
    ("data.buckets", (), "pad each batch to the smallest of these lengths that fits"),
    ("data.pad_to_square", True, "pad images to a square with the mean colour (LLaVA-1.5)"),
    ("data.max_images_per_sample", 1, "image slots per sample"),
    ("data.packing", False, "pack whole samples (with their images) into rows of data.max_length; "
     "train.batch_size then counts rows"),
    ("data.max_images_per_row", 4, "image slots of a packed row (a sample whose images do not fit "
     "goes to another row)"),
    ("data.pack_window", 256, "samples of the shuffled stream packed together, first-fit"),
    ("data.num_workers", 4, "grain worker processes (0 = in the main process)"),
    ("data.num_epochs", None, "passes over the data; None = repeat until train.steps"),

    ("train.steps", 5198, "optimizer steps (one epoch of LLaVA-665K at batch 128)"),
    ("train.batch_size", 128, "global batch size in samples (in rows with data.packing)"),
    ("train.prefetch", 2, "batches built and put on the devices ahead of the step (0 = none)"),
    ("train.grad_accum", 1, "micro-batches per step (must divide train.batch_size)"),
    ("train.lr", 2e-4, "peak learning rate of region layers / LoRA factors"),
    ("train.projector_lr", 2e-5, "peak learning rate of the projector"),
    ("train.vision_lr", 2e-6, "peak learning rate of the vision tower (region.train_vision)"),
    ("train.weight_decay", 0.0, "AdamW decoupled weight decay"),
    ("train.warmup_ratio", 0.03, "share of steps of linear warmup before the cosine decay"),
    ("train.max_grad_norm", 1.0, "clip gradients to this global norm"),
    ("train.log_every", 10, "steps between metrics.jsonl records"),
    ("train.checkpoint_every", 500, "steps between checkpoints"),
    ("train.keep_checkpoints", 2, "newest intact checkpoints kept (older ones are deleted)"),
    ("train.keep_every", 0, "also keep every checkpoint whose step is a multiple of this (0 = none)"),
    ("train.max_bad_steps", 10, "stop after this many non-finite steps in a row"),
    ("train.export_hf", True, "write WORKDIR/hf (LoRA merged) at the end"),
    ("train.profile_steps", (), "(first, last) step: a jax.profiler trace of those steps in WORKDIR/profile"),

    ("eval.every", 0, "steps between held-out evaluations (0 = never during training)"),
    ("eval.at_start", False, "evaluate before the first step"),
    ("eval.at_end", True, "evaluate after the last step"),
    ("eval.num_samples", 64, "held-out samples per evaluation"),
    ("eval.max_new_tokens", 16, "greedy tokens generated per answer"),
    ("eval.tasks", "", "benchmarks to evaluate, lmms-eval's names, comma separated (gqa, textvqa_val, vqav2_val, "
     "pope, mme, scienceqa_img, seedbench, mmbench_en_dev, mmmu_val, mmlu): at the end of training, by "
     "`python -m visregion_jax.evaluate`, in pruning's report (docs/evaluation.md)"),
    ("eval.model", "", "the model `python -m visregion_jax.evaluate` evaluates (HF dir, JAX checkpoint or "
     "training workdir); empty = this config's workdir"),
    *((f"eval.data.{task}", "", f"folder of {task}'s published files (docs/evaluation.md)") for task in (
        "gqa", "textvqa_val", "vqav2_val", "pope", "mme", "scienceqa_img", "seedbench", "mmbench_en_dev",
        "mmmu_val", "mmlu")),
    ("eval.batch_size", 8, "benchmark samples answered per batch, over all processes"),
    ("eval.limit", 0, "benchmark samples per task, the first ones (0 = all)"),
    ("eval.prompt_style", "llava", "benchmark prompts worded as LLaVA-1.5's eval (llava) or lmms-eval's (lmms_eval)"),

    ("prune.model", "", "HF dir to prune; empty = the training run's export WORKDIR/hf"),
    ("prune.k", 2, "layers to remove"),
    ("prune.metric", "block_influence", "block_influence or angular"),
    ("prune.block_size", 1, "score blocks of this many consecutive layers"),
    ("prune.tokens", "all", "score on all, text or image tokens"),
    ("prune.contiguous", False, "baseline: drop the lowest-scoring block of k layers"),
    ("prune.allow_region", False, "baseline: region layers may be removed too"),
    ("prune.calibration_samples", 64, "samples the scores are computed on"),
    ("prune.calibration_json", "", "calibration conversations; empty = data.train_json"),
    ("prune.batch_size", 8, "calibration batch size (pruning's scores, the scored region's probe)"),
    ("prune.scores_json", "", "reuse a scores.json of this model (same depth, block size, metric)"),
    ("prune.layers", (), "decoder layers of the unpruned model to remove, e.g. (2,6); empty = the prune.k "
     "chosen by score"),
    ("prune.iterative", False, "remove one layer at a time and re-score the shallower model (else one-shot)"),
    ("prune.latency_runs", 10, "timed forward passes per model, interleaved across the models compared"),
    ("prune.heal_steps", 0, "healing: training steps on the pruned model after removal (0 = no healing)"),
    ("prune.heal_layers", "region", "layers healing trains: region (renumbered), neighbours (of the removed "
     "layers) or pruned-model indices such as (0,2)"),
    ("prune.heal_lora_rank", 0, "0: the heal layers fully updated; > 0: LoRA of this rank on their linears"),
    ("prune.heal_lora_alpha", 16.0, "healing LoRA scale numerator (scale = alpha / rank)"),
    ("prune.heal_lr", 1e-4, "peak learning rate of healing (batch, schedule, checkpoints: train.*)"),

    ("mesh.data", 1, "data-parallel axis size (-1 = all remaining devices)"),
    ("mesh.fsdp", -1, "fully sharded data-parallel axis size"),
    ("mesh.tensor", 1, "tensor-parallel axis size (heads and MLP)"),
)


def base_config() -> ml_collections.ConfigDict:
  """Every key a run reads, at its default."""
  config = ml_collections.ConfigDict()
  for key, default, _ in KEYS:
    *sections, name = key.split(".")
    node = config
    for section in sections:
      if section not in node:
        node[section] = ml_collections.ConfigDict()
      node = node[section]
    node[name] = default
  return config


def describe_keys(config: ml_collections.ConfigDict) -> str:
  """`KEY = VALUE  meaning` lines of a resolved config, for `--help`."""
  meanings = {key: meaning for key, _, meaning in KEYS}
  lines = []

  def walk(node, prefix):
    for name, value in node.items():
      key = prefix + name
      if isinstance(value, ml_collections.ConfigDict):
        walk(value, key + ".")
      else:
        lines.append(f"  {key} = {value!r}" + (f"\n      {meanings[key]}" if key in meanings else ""))

  walk(config, "")
  return "\n".join(lines)
