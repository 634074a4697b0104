"""The PyTorch reference of bench_train_step.py: the same step in transformers, timed beside JAX's.

Its tokens/s are the bar the JAX full fine-tune has to clear (JAX / PyTorch >= 1.0).
"""

import time


class TorchFineTune:
  """transformers' LlavaForConditionalGeneration loaded from the JAX model's own export
  (`convert.to_hf`: the same SmolLM2 weights, tower and projector), trained as the JAX
  variant is: the frozen tower's forward, `requires_grad` on the projector and the given
  decoder layers (all of them: the full fine-tune; embeddings, tied head and final norm
  frozen, as the JAX labeler does), AdamW with the same hyperparameters and global-norm
  clipping, fed the same input ids, images, mask and labels. The same step, so that
  neither side is timed for work the other skips: the projector's gradient reaches
  below the first decoder layer in both."""

  def __init__(self, hf_dir: str, train_config, foreach: bool, layers=None):
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    t0 = time.perf_counter()
    self.hf = transformers.LlavaForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32)
    self.load_s = time.perf_counter() - t0
    self.hf.train()
    for p in self.hf.parameters():
      p.requires_grad_(False)
    decoder = self.hf.model.language_model.layers
    layers = range(len(decoder)) if layers is None else layers
    self.trainable = list(self.hf.model.multi_modal_projector.parameters()) + [
        p for i in layers for p in decoder[i].parameters()]
    for p in self.trainable:
      p.requires_grad_(True)
    self.max_norm = train_config.max_grad_norm
    self.opt = torch.optim.AdamW(self.trainable, lr=train_config.lr, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=train_config.weight_decay, foreach=foreach)
    self.attn = self.hf.config.text_config._attn_implementation  # pylint: disable=protected-access

  def set_batch(self, batch: dict) -> None:
    """The JAX batch as transformers takes it: images NHWC -> NCHW, everything else as is."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
    self.inputs = {"input_ids": torch.from_numpy(batch["input_ids"].astype(np.int64)),
                   "attention_mask": torch.from_numpy(batch["attention_mask"].astype(np.int64)),
                   "labels": torch.from_numpy(batch["labels"].astype(np.int64)),
                   "pixel_values": torch.from_numpy(np.ascontiguousarray(
                       batch["pixel_values"].transpose(0, 3, 1, 2)))}

  def step(self, threads: int) -> float:
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(threads)
    self.opt.zero_grad(set_to_none=True)
    loss = self.hf(**self.inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.trainable, self.max_norm)
    self.opt.step()
    return float(loss.detach())

  @property
  def opt_bytes(self) -> int:
    return sum(int(v.numel() * v.element_size()) for s in self.opt.state.values()
               for v in s.values() if hasattr(v, "numel"))
