"""The training plan: which parameters a run trains, and everything that follows from it.

Built once from the config and the model's depth, the plan is the only place that
decides trainability. Its label of a parameter (`frozen`, `projector`, `region`,
`lora`, `vision`) picks what is differentiated (frozen weights get no gradient
computed at all), the optimizer group (learning rate, weight decay), what a
checkpoint holds (the trainable state, and the plan itself to check on restore) and
what export merges (the `lora` factors, folded into their kernels). Training, resume,
export, the dry run, pruning and the tools all ask it; nothing re-derives it.

LoRA factors are recognised by their variable type (`nnx.LoRAParam`), layers by the
`layers/<i>` part of their path (under `language_model` in an LVLM).
"""

import dataclasses

import jax.numpy as jnp
from flax import nnx

from visregion_jax import region
from visregion_jax.errors import VisRegionError
from visregion_jax.models.lora import Dense, lora_linears

FROZEN, PROJECTOR, REGION, LORA, VISION = "frozen", "projector", "region", "lora", "vision"
LABELS = (FROZEN, PROJECTOR, REGION, LORA, VISION)


def decoder_layer_of(path: tuple):
  """The decoder layer index a parameter path lies in, or None (embeddings, norm, head,
  vision tower, projector). An LVLM nests the decoder under `language_model`."""
  parts = path[1:] if path and path[0] == "language_model" else path
  if len(parts) >= 2 and parts[0] == "layers":
    return int(parts[1])
  return None


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
  region_layers: tuple
  lora_rank: int = 0
  lora_alpha: float = 0.0
  lora_dropout: float = 0.0
  train_vision: bool = False
  train_projector: bool = True

  @classmethod
  def from_config(cls, config, num_layers: int, layers=None) -> "TrainingPlan":
    """The plan of a training config's `region` section for a decoder of `num_layers`;
    `layers` are the region when something else chose them (the `scored` probe)."""
    r = config.region
    if not isinstance(r.lora_rank, int) or r.lora_rank < 0:
      raise VisRegionError("region.lora_rank", f"expected 0 (full update) or a positive rank, got {r.lora_rank!r}")
    if layers is None:
      layers = region.select_layers(num_layers, r.fraction, r.strategy, list(r.get("layers") or ()))
    train_projector = bool(r.get("train_projector", True))  # a run's config.json from before the key
    if not (layers or train_projector or r.train_vision):
      raise VisRegionError("region.train_projector", "expected something to train: region layers, the projector "
                           "or the vision tower")
    return cls(region_layers=tuple(layers), lora_rank=r.lora_rank, lora_alpha=float(r.lora_alpha),
               lora_dropout=float(r.lora_dropout), train_vision=bool(r.train_vision),
               train_projector=train_projector)

  @classmethod
  def from_json(cls, d: dict) -> "TrainingPlan":
    return cls(**{**d, "region_layers": tuple(d["region_layers"])})

  def to_json(self) -> dict:
    return {**dataclasses.asdict(self), "region_layers": list(self.region_layers)}

  @property
  def uses_lora(self) -> bool:
    return self.lora_rank > 0

  def describe(self) -> str:
    if not self.region_layers:
      return "projector only" if self.train_projector else "vision tower only"
    update = f"LoRA r={self.lora_rank}" if self.uses_lora else "full update"
    return f"region layers {list(self.region_layers)}; {update}" + ("" if self.train_projector else
                                                                   "; projector frozen")

  # --- labels ---------------------------------------------------------------------
  def label(self, path: tuple, variable) -> str:
    """The group of one parameter (path from `nnx.to_flat_state`, its Variable)."""
    path = tuple(path)
    if path[0] == "projector":
      return PROJECTOR if self.train_projector else FROZEN
    if path[0] == "vision_tower":
      return VISION if self.train_vision else FROZEN
    layer = decoder_layer_of(path)
    if layer is None or layer not in self.region_layers:
      return FROZEN
    if isinstance(variable, nnx.LoRAParam):
      return LORA
    return FROZEN if self.uses_lora else REGION

  def is_trainable(self, path, variable) -> bool:
    """An NNX filter: parameters whose label is not frozen."""
    return isinstance(variable, nnx.Param) and self.label(path, variable) != FROZEN

  def labels(self, params: nnx.State) -> nnx.State:
    """A label for every leaf of a parameter state (same tree), for optax.multi_transform."""
    return nnx.map_state(self.label, params)

  # --- the model ------------------------------------------------------------------
  def prepare(self, model, seed: int) -> None:
    """Attaches LoRA to the region layers and casts: trainable parameters as float32
    master copies, frozen ones in the compute dtype."""
    if self.uses_lora:
      rngs = nnx.Rngs(params=seed, dropout=seed + 1)
      for i in self.region_layers:
        for _, module in model.layers[i].iter_modules():
          if isinstance(module, Dense):
            module.add_lora(self.lora_rank, self.lora_alpha, self.lora_dropout, rngs)
    compute = model.config.compute_dtype
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
      dtype = jnp.float32 if self.label(path, variable) != FROZEN else compute
      if variable.get_value().dtype != dtype:
        variable.set_value(variable.get_value().astype(dtype))

  def split(self, model) -> tuple:
    """(graphdef, trainable, frozen, rest): the parameters that are differentiated,
    those that are not, and the rest (RNG streams)."""
    return nnx.split(model, self.is_trainable, nnx.Param, ...)

  def merge_lora(self, model) -> None:
    """Folds every `lora` factor pair into its kernel (W + alpha/r A B) and detaches
    it, in place: what an export writes."""
    for path, dense in lora_linears(model):
      if self.label(tuple(path) + ("lora_a",), dense.lora_a) == LORA:
        dense.merge_lora()
