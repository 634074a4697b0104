"""A seconds-long run on tiny random models: the test suite's training config."""

from visregion_jax import base_config


def get_config():
  c = base_config()
  c.data.template = "tokenizer"
  c.data.max_length = 64
  c.data.num_workers = 0
  c.region.lora_rank = 0
  c.region.lora_dropout = 0.0
  c.train.steps = 3
  c.train.batch_size = 8
  c.train.lr = 1e-3
  c.train.projector_lr = 1e-3
  c.train.log_every = 1
  c.train.checkpoint_every = 2
  c.train.export_hf = False
  c.eval.at_end = False
  c.eval.num_samples = 8
  c.eval.max_new_tokens = 4
  return c
