"""The LVLM: vision tower -> projector -> features placed at image tokens -> decoder.

Inputs follow transformers' LlavaForConditionalGeneration: the prompt holds the image
token once per image feature, and `pixel_values` stacks the batch's images in the
order their tokens appear (several per sample, or none for a text-only sample).
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from visregion_jax.errors import VisRegionError
from visregion_jax.models.config import DecoderConfig
from visregion_jax.models.llama import Decoder, DecoderOutput, KVCache
from visregion_jax.models.projector import Projector
from visregion_jax.models.vision import VisionConfig, VisionTower


@dataclasses.dataclass(frozen=True)
class LVLMConfig:
  text: DecoderConfig
  vision: VisionConfig
  image_token_id: int
  projector_type: str = "mlp2x_gelu"
  projector_bias: bool = True
  feature_layers: tuple = (-2,)     # vision hidden states to use, concatenated
  feature_strategy: str = "default"  # "default" drops CLS, "full" keeps every token
  hf_config_json: str = "{}"

  @property
  def num_image_tokens(self) -> int:
    """Features (image tokens) per image: "default" drops the first token, as HF does
    even for SigLIP, which has no CLS token."""
    return self.vision.num_positions - int(self.feature_strategy == "default")

  # What generation and training read from any model's config.
  @property
  def eos_token_ids(self) -> tuple:
    return self.text.eos_token_ids

  @property
  def pad_token_id(self):
    return self.text.pad_token_id

  @property
  def source(self) -> str:
    return self.text.source

  @property
  def compute_dtype(self):
    return self.text.compute_dtype

  def replace(self, **changes) -> "LVLMConfig":
    return dataclasses.replace(self, **changes)


class LVLM(nnx.Module):
  def __init__(self, config: LVLMConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.vision_tower = VisionTower(config.vision, rngs=rngs)
    self.projector = Projector(
        config.projector_type, config.vision.hidden_size * len(config.feature_layers),
        config.text.hidden_size, bias=config.projector_bias, dtype=config.text.compute_dtype,
        param_dtype=jnp.dtype(config.text.param_dtype), rngs=rngs)
    self.language_model = Decoder(config.text, rngs=rngs)

  @property
  def layers(self):
    """The decoder layers: what region training and pruning act on."""
    return self.language_model.layers

  def __call__(self, input_ids, pixel_values=None, attention_mask=None) -> jnp.ndarray:
    return self.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask).logits

  def image_features(self, pixel_values: jnp.ndarray) -> jnp.ndarray:
    """Projected features [N, num_image_tokens, text hidden] of NHWC images."""
    cfg = self.config
    feats = self.vision_tower.features(pixel_values.astype(cfg.vision.compute_dtype),
                                       cfg.feature_layers, cfg.feature_strategy)
    return self.projector(feats.astype(cfg.text.compute_dtype))

  def validate(self, input_ids, pixel_values=None, image_mask=None) -> None:
    """Image tokens must match the real images' features one to one (checked when not traced)."""
    if isinstance(input_ids, jax.core.Tracer) or isinstance(image_mask, jax.core.Tracer):
      return
    images = 0 if pixel_values is None else pixel_values.shape[0]
    if image_mask is not None:
      images = int(np.sum(np.asarray(image_mask)))
    expected = images * self.config.num_image_tokens
    found = int(np.sum(np.asarray(input_ids) == self.config.image_token_id))
    if found != expected:
      raise VisRegionError("input_ids", f"expected {expected} image tokens (images x "
                           f"features per image), found {found}")

  def embed(self, input_ids: jnp.ndarray, pixel_values: Optional[jnp.ndarray],
            image_mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """Token embeddings with image features scattered onto the image tokens, in order.

    Batches with a fixed image axis hold padding images anywhere in it (`image_mask`
    False there); their features are computed but land on no token.
    """
    self.validate(input_ids, pixel_values, image_mask)
    is_image = input_ids == self.config.image_token_id
    if pixel_values is None:
      return self.language_model.embed(input_ids)
    embeds = self.language_model.embed(jnp.where(is_image, 0, input_ids))
    feats = self.image_features(pixel_values)
    if image_mask is not None:  # the real images first, still in order
      feats = feats[jnp.argsort(~jnp.asarray(image_mask, bool), stable=True)]
    flat = feats.reshape(-1, feats.shape[-1])
    order = jnp.clip(jnp.cumsum(is_image.reshape(-1)) - 1, 0, flat.shape[0] - 1)
    placed = flat[order].reshape(embeds.shape)
    return jnp.where(is_image[..., None], placed.astype(embeds.dtype), embeds)

  def forward(self, input_ids: jnp.ndarray, *, pixel_values: Optional[jnp.ndarray] = None,
              image_mask: Optional[jnp.ndarray] = None, attention_mask: Optional[jnp.ndarray] = None,
              positions: Optional[jnp.ndarray] = None, segment_ids: Optional[jnp.ndarray] = None,
              cache: Optional[KVCache] = None,
              logits: str = "all", hidden_states: bool = False) -> DecoderOutput:
    """As Decoder.forward; `pixel_values` float [N, H, W, 3], already normalized, with an
    optional `image_mask` [N] marking real images (in token order; padding between them).
    In a packed row (`segment_ids`) each sample's images come in its own token order, so
    every sample's features land on its own image tokens."""
    return self.language_model.forward(
        inputs_embeds=self.embed(input_ids, pixel_values, image_mask), attention_mask=attention_mask,
        positions=positions, segment_ids=segment_ids, cache=cache, logits=logits, hidden_states=hidden_states)

  def init_cache(self, batch: int, length: int) -> KVCache:
    return self.language_model.init_cache(batch, length)


def abstract_lvlm(config: LVLMConfig) -> LVLM:
  return nnx.eval_shape(lambda: LVLM(config, rngs=nnx.Rngs(0)))
