"""The model a training config asks for: loaded, composed into an LVLM, prepared by its
training plan.

`model.init_from` is an llava-hf directory (an LVLM as is) or a decoder (HF directory,
GGUF, alias); a decoder is joined with the vision tower of `model.vision_tower` (an
HF CLIP/SigLIP directory) and a freshly initialized projector, as model_spec.py
describes it, and gets an `<image>` token (one new embedding row, the mean of the
others; the tokenizer is extended and written to the workdir so exports and resumes
use the same ids).
"""

import hashlib
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from visregion_jax.convert import from_hf, tokenizer
from visregion_jax.convert.image_token import tokenizer_with_image_token
from visregion_jax.convert.params import default_compute_dtype, merge_params, model_params
from visregion_jax.convert.processor import write_processor
from visregion_jax.convert.vision import vision_tower_from_hf
from visregion_jax.data.from_config import image_processor_config
from visregion_jax.model_spec import joined_lvlm_config
from visregion_jax.models.attention_choice import set_attention
from visregion_jax.models.llama import Decoder
from visregion_jax.models.lvlm import LVLM, abstract_lvlm
from visregion_jax.models.projector import Projector
from visregion_jax.plan import TrainingPlan
from visregion_jax.publish import published_directory
from visregion_jax.train.region_probe import scored_region


def with_image_row(decoder: Decoder) -> dict:
  """The decoder's params with one more vocabulary row: the mean row."""
  params = model_params(decoder)
  for path in (("embed_tokens", "embedding"), ("lm_head", "kernel")):
    if path in params:
      w = params[path]
      axis = 0 if path[0] == "embed_tokens" else 1
      mean = jnp.mean(w.astype(jnp.float32), axis=axis, keepdims=True).astype(w.dtype)
      params[path] = jnp.concatenate([w, mean], axis=axis)
  return params


def compose_lvlm(decoder: Decoder, tower_dir: str, config, workdir: str) -> LVLM:
  """The decoder joined with the tower of `tower_dir` and a new projector; its
  tokenizer directory (`workdir/tokenizer`) is the LVLM's whole processor: `<image>`,
  the image processor and the chat template the run trains with (convert/processor.py)."""
  tower = vision_tower_from_hf(tower_dir, dtype=decoder.config.dtype)
  lvlm_config = joined_lvlm_config(decoder.config, tower.config, config.model)
  if tokenizer.has_tokenizer(decoder.config.source):
    # Each process writes its own copy and reads only that: processes writing one directory
    # of a shared workdir in place would read each other's half-written files. Process 0
    # publishes its copy whole as WORKDIR/tokenizer, the source exports and resumes use.
    private = tokenizer_with_image_token(decoder.config.source, lvlm_config.image_token_id)
    write_processor(private, tokenizer.load_tokenizer(private), lvlm_config,
                    image_processor_config(tower.config, tower_dir), pad_to_square=config.data.pad_to_square,
                    template=config.data.template)
    source = private
    if jax.process_index() == 0:
      source = os.path.join(workdir, "tokenizer")
      with published_directory(source) as partial:
        shutil.copytree(private, partial, dirs_exist_ok=True)
    lvlm_config = lvlm_config.replace(text=lvlm_config.text.replace(source=source))
  return _joined(decoder, tower, lvlm_config, config.seed)


def _joined(decoder: Decoder, tower, config, seed: int) -> LVLM:
  text_config = config.text
  projector = Projector(config.projector_type, tower.config.hidden_size * len(config.feature_layers),
                        text_config.hidden_size, dtype=text_config.compute_dtype,
                        param_dtype=jnp.float32, rngs=nnx.Rngs(params=seed))
  values = {("language_model",) + p: v for p, v in with_image_row(decoder).items()}
  values.update({("vision_tower",) + p: v for p, v in model_params(tower).items()})
  values.update({("projector",) + p: v for p, v in model_params(projector).items()})
  return merge_params(abstract_lvlm(config), values)


def build_model(config, workdir: str) -> tuple:
  """(model, training plan) for a training config; the model is ready to split. A
  `scored` region is probed here, on the model as built (train/region_probe.py)."""
  m = config.model
  dtype = m.get("dtype") or default_compute_dtype()
  model = from_hf(m.init_from, dtype=dtype)
  if isinstance(model, Decoder) and m.get("vision_tower"):
    model = compose_lvlm(model, m.vision_tower, config, workdir)
  set_attention(model, m.attention, m.attention_interpret)
  scored = scored_region(config, model, workdir) if config.region.strategy == "scored" else None
  plan = TrainingPlan.from_config(config, len(model.layers), scored)
  plan.prepare(model, config.seed)
  set_training_options(model, m)
  return model, plan


def set_training_options(model, m) -> None:
  """The config's `model.remat` and `model.loss_tiles` on the decoder's config (static
  module data: a change is a new jit cache key); neither changes the weights."""
  decoder = model.language_model if isinstance(model, LVLM) else model
  decoder.config = decoder.config.replace(remat=bool(m.get("remat")), loss_tiles=m.get("loss_tiles", 0))


def fingerprint(model, plan: TrainingPlan) -> str:
  """A cheap identity of the frozen base (what a checkpoint references instead of
  holding it): shapes, dtypes and a strided value sample of every frozen parameter."""
  h = hashlib.sha256()
  frozen = nnx.to_flat_state(nnx.state(model, nnx.Param))
  for path, variable in sorted(frozen, key=lambda kv: str(kv[0])):
    if plan.is_trainable(path, variable):
      continue
    value = variable.get_value()
    sample = np.asarray(value.reshape(-1)[:: max(1, value.size // 64)][:64], np.float32)
    h.update(f"{path}{value.shape}{value.dtype}".encode())
    h.update(sample.tobytes())
  return h.hexdigest()[:16]
