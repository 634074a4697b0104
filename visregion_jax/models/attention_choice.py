"""`model.attention` on a built model: written into the decoder's and the vision tower's
configs (static module data, so a changed choice is a new jit cache key), and into an
LVLM's own config, which exports and checkpoints read."""

from visregion_jax.models.attention import check_choice
from visregion_jax.models.lvlm import LVLM


def set_attention(model, attention: str, interpret: bool = False, prefix: str = "model.") -> None:
  """Every attention of `model` (a Decoder, VisionTower or LVLM) runs `attention`; a bad
  choice is a VisRegionError naming `{prefix}attention`."""
  check_choice(attention, interpret, prefix)
  change = dict(attention=attention, attention_interpret=interpret)
  if isinstance(model, LVLM):
    for part in (model.language_model, model.vision_tower):
      part.config = part.config.replace(**change)
    model.config = model.config.replace(text=model.config.text.replace(**change),
                                        vision=model.config.vision.replace(**change))
  else:  # a Decoder or a VisionTower
    model.config = model.config.replace(**change)
