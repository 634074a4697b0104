"""The PyTorch reference of bench_train_step.py: the same step in transformers, timed beside JAX's.

Its tokens/s are the bar the JAX full fine-tune has to clear (JAX / PyTorch >= 1.0).
"""

import os
import time

MODEL = "smollm2-135m-instruct"


class TorchFineTune:
  """transformers' LlamaForCausalLM from the same GGUF with `requires_grad` on the given
  decoder layers only (all of them: the full fine-tune; embeddings, tied head and final
  norm frozen, as the JAX labeler does), AdamW with the same hyperparameters and
  global-norm clipping, fed `inputs_embeds`. The region row is the issue's PyTorch
  reference setting (8 of 30 layers with requires_grad) measured on this machine.
  `num_layers` keeps the first layers only, as the JAX side's `decoder_loaded_once`."""

  def __init__(self, train_config, foreach: bool, layers=None, num_layers=None):
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel

    from visregion_jax.convert.gguf_file import resolve_model_path  # pylint: disable=import-outside-toplevel
    transformers.utils.logging.disable_progress_bar()
    path = resolve_model_path(MODEL)
    t0 = time.perf_counter()
    self.hf = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32)
    self.load_s = time.perf_counter() - t0
    if num_layers and num_layers < len(self.hf.model.layers):
      del self.hf.model.layers[num_layers:]
      self.hf.config.num_hidden_layers = num_layers
    self.hf.train()
    for p in self.hf.parameters():
      p.requires_grad_(False)
    layers = range(len(self.hf.model.layers)) if layers is None else layers
    self.trainable = [p for i in layers for p in self.hf.model.layers[i].parameters()]
    for p in self.trainable:
      p.requires_grad_(True)
    self.max_norm = train_config.max_grad_norm
    self.opt = torch.optim.AdamW(self.trainable, lr=train_config.lr, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=train_config.weight_decay, foreach=foreach)
    self.attn = self.hf.config._attn_implementation  # pylint: disable=protected-access

  def set_batch(self, batch: dict, seed: int = 0) -> None:
    """The JAX batch's ids (image tokens replaced by random features) as inputs_embeds."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
    ids = torch.from_numpy(np.minimum(batch["input_ids"], self.hf.config.vocab_size - 1).astype(np.int64))
    with torch.no_grad():
      embeds = self.hf.get_input_embeddings()(ids)
    image = torch.from_numpy(batch["input_ids"] >= self.hf.config.vocab_size)
    noise = torch.from_numpy(np.random.RandomState(seed).normal(size=embeds.shape).astype(np.float32))
    self.embeds = torch.where(image[..., None], noise * 0.02, embeds).contiguous()
    self.mask = torch.from_numpy(batch["attention_mask"].astype(np.int64))
    self.labels = torch.from_numpy(batch["labels"].astype(np.int64))

  def step(self, threads: int) -> float:
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(threads)
    self.opt.zero_grad(set_to_none=True)
    loss = self.hf(inputs_embeds=self.embeds, attention_mask=self.mask, labels=self.labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.trainable, self.max_norm)
    self.opt.step()
    return float(loss.detach())

  @property
  def opt_bytes(self) -> int:
    return sum(int(v.numel() * v.element_size()) for s in self.opt.state.values()
               for v in s.values() if hasattr(v, "numel"))
