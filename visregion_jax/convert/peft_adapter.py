"""PEFT LoRA adapters, merged on import in HF name space as a tensor source.

`LoraMergedSource` wraps a base checkpoint's tensor source and presents every tensor
with the adapter applied: W' = W + scale * B @ A, computed in float32 and cast back to
the base dtype, and the full tensors the adapter directory saved (`modules_to_save`,
LLaVA's `non_lora_trainables`) in place of the base ones. Merging before the name
tables run means every table (Phi-3's fused qkv_proj too) and every importer gets
merged weights without knowing LoRA exists. Whether the adapter fits its base (modules,
layers, shapes) is checked when the source is built, before any tensor is read.
"""

import dataclasses
import math
import os
import re
from typing import Optional

import numpy as np

from visregion_jax.convert import tensor_files
from visregion_jax.errors import VisRegionError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model"
NON_LORA_TRAINABLES = "non_lora_trainables"
_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the model the adapter was trained on
_FACTOR = re.compile(r"(?P<module>.+)\.lora_(?P<which>[AB])\.weight")
_UNSUPPORTED = ("use_dora", "fan_in_fan_out", "lora_bias")


def open_weights_file(directory: str, stem: str):
  """`stem`.safetensors, else `stem`.bin (torch.load(weights_only=True)); None if neither."""
  if os.path.isfile(os.path.join(directory, stem + ".safetensors")):
    return tensor_files.SafetensorsSource(directory, single=stem + ".safetensors",
                                          index=stem + ".safetensors.index.json")
  if os.path.isfile(os.path.join(directory, stem + ".bin")):
    return tensor_files.TorchBinSource(directory, single=stem + ".bin", index=stem + ".bin.index.json")
  return None


def _pattern_value(patterns: dict, module: str, default):
  """PEFT's rank_pattern / alpha_pattern lookup (peft.utils.other.get_pattern_key)."""
  for key, value in patterns.items():
    if re.match(rf"(.*\.)?({key})$", module):
      return value
  return default


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """The adapter_config.json fields that decide which modules carry factors and their scale."""
  r: int
  alpha: float
  rslora: bool
  targets: object  # a regex string, a list of module-name suffixes, or None (not recorded)
  layers: Optional[tuple]
  layers_pattern: tuple
  rank_pattern: dict
  alpha_pattern: dict
  where: str

  @classmethod
  def read(cls, path: str) -> "AdapterConfig":
    d = tensor_files.read_json_object(path)
    if d.get("peft_type", "LORA") != "LORA":
      raise VisRegionError(f"{path}: peft_type", f"expected 'LORA', got {d.get('peft_type')!r}")
    for key in _UNSUPPORTED:
      if d.get(key):
        raise VisRegionError(f"{path}: {key}", "expected false (merging this LoRA variant is not supported)")
    r, alpha = d.get("r", 8), d.get("lora_alpha", 8)
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
      raise VisRegionError(f"{path}: r", f"expected a positive integer, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
      raise VisRegionError(f"{path}: lora_alpha", f"expected a number, got {alpha!r}")
    targets = d.get("target_modules")
    if not (targets is None or isinstance(targets, str) or
            (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
      raise VisRegionError(f"{path}: target_modules", f"expected a regex or a list of names, got {targets!r}")
    layers = d.get("layers_to_transform")
    layers = [layers] if isinstance(layers, int) else layers
    if layers is not None and not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
      raise VisRegionError(f"{path}: layers_to_transform", f"expected layer indices, got {layers!r}")
    pattern = d.get("layers_pattern") or ()
    patterns = {k: d.get(k) or {} for k in ("rank_pattern", "alpha_pattern")}
    for key, value in patterns.items():
      if not isinstance(value, dict):
        raise VisRegionError(f"{path}: {key}", f"expected a mapping, got {value!r}")
    return cls(r=r, alpha=float(alpha), rslora=bool(d.get("use_rslora", False)), targets=targets,
               layers=tuple(layers) if layers else None,
               layers_pattern=(pattern,) if isinstance(pattern, str) else tuple(pattern),
               where=path, **patterns)

  def rank(self, module: str) -> int:
    return _pattern_value(self.rank_pattern, module, self.r)

  def scale(self, module: str) -> float:
    """alpha / r, or alpha / sqrt(r) with use_rslora, as PEFT's LoraLayer.update_layer."""
    r, alpha = self.rank(module), _pattern_value(self.alpha_pattern, module, self.alpha)
    return alpha / math.sqrt(r) if self.rslora else alpha / r

  def check_selected(self, module: str, where: str) -> None:
    """Factors must sit on a module this config targets (peft's check_target_module_exists)."""
    if self.targets is None:
      return
    if isinstance(self.targets, str):
      if not re.fullmatch(self.targets, module):
        raise VisRegionError(where, f"LoRA factors for {module}, which target_modules "
                             f"{self.targets!r} ({self.where}) does not match")
      return
    if not (module in self.targets or any(module.endswith("." + t) for t in self.targets)):
      raise VisRegionError(where, f"LoRA factors for {module}, which is not in target_modules "
                           f"{self.targets} ({self.where})")
    if self.layers is not None:
      layer = self._layer_index(module)
      if layer not in self.layers:
        raise VisRegionError(where, f"LoRA factors for layer {layer} ({module}), outside "
                             f"layers_to_transform {list(self.layers)} ({self.where})")

  def _layer_index(self, module: str) -> Optional[int]:
    patterns = [rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\." for p in self.layers_pattern]
    for pattern in patterns or [r".*?\.[^.]*\.(?P<idx>\d+)\."]:
      match = re.match(pattern, module)
      if match:
        return int(match.group("idx"))
    return None


class LoraMergedSource:
  """A tensor source: `base` with the adapter directory's LoRA deltas and full tensors applied."""

  def __init__(self, base, adapter_dir: str):
    if not os.path.isdir(adapter_dir):
      raise VisRegionError(adapter_dir, "expected a PEFT adapter directory")
    config = AdapterConfig.read(os.path.join(adapter_dir, ADAPTER_CONFIG))
    weights = open_weights_file(adapter_dir, ADAPTER_WEIGHTS)
    if weights is None:
      raise VisRegionError(adapter_dir, f"expected {ADAPTER_WEIGHTS}.safetensors or "
                           f"{ADAPTER_WEIGHTS}.bin beside {ADAPTER_CONFIG}")
    self.name, self._base = base.name, base
    self._overrides, factors = {}, {}  # overrides: our key -> (source, its key)
    for key in sorted(weights.keys()):
      name = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
      match = _FACTOR.fullmatch(name)
      if match:
        factors.setdefault(match["module"], {})[match["which"]] = key
      elif "lora_" in name:
        raise VisRegionError(f"{weights.where(key)}: {key}", "expected only lora_A / lora_B "
                             "weights (this LoRA variant is not supported)")
      else:  # modules_to_save: a full copy of a base tensor
        self._override(weights, key, name, must_exist=True)
    trainables = open_weights_file(adapter_dir, NON_LORA_TRAINABLES)
    for key in sorted(trainables.keys()) if trainables else ():
      # LLaVA saves what LoRA runs train in full (the projector) here; the base may lack it.
      name = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
      self._override(trainables, key, name, must_exist=False)
    self._deltas = {}
    for module, pair in sorted(factors.items()):
      self._deltas[module + ".weight"] = self._checked_factors(config, weights, module, pair)

  def _override(self, source, key: str, name: str, must_exist: bool) -> None:
    where = f"{source.where(key)}: {key}"
    if name not in self._base.keys():
      if must_exist:
        raise VisRegionError(where, f"expected a tensor of the base checkpoint {self._base.name} "
                             f"({name} is not there)")
    elif tuple(source.shape(key)) != tuple(self._base.shape(name)):
      raise VisRegionError(where, f"expected the shape of the base tensor {name} "
                           f"{list(self._base.shape(name))}, got {list(source.shape(key))}")
    self._overrides[name] = (source, key)

  def _checked_factors(self, config: AdapterConfig, weights, module: str, pair: dict) -> tuple:
    present = next(iter(pair.values()))
    where = f"{weights.where(present)}: {present}"
    if set(pair) != {"A", "B"}:
      missing = "lora_B" if "A" in pair else "lora_A"
      raise VisRegionError(where, f"expected {module}.{missing}.weight beside it")
    base_key = module + ".weight"
    if base_key not in self.keys():
      raise VisRegionError(where, f"LoRA factors for {base_key}, which the base checkpoint "
                           f"{self._base.name} lacks (an adapter for another model?)")
    config.check_selected(module, where)
    shape, r = tuple(self.shape(base_key)), config.rank(module)
    a, b = tuple(weights.shape(pair["A"])), tuple(weights.shape(pair["B"]))
    if len(shape) != 2 or a != (r, shape[1]) or b != (shape[0], r):
      raise VisRegionError(where, f"expected lora_A [{r}, in] and lora_B [out, {r}] for {base_key} "
                           f"[out, in] = {list(shape)}, got {list(a)} and {list(b)}")
    return weights, pair["A"], pair["B"], config.scale(module)

  def keys(self) -> set:
    return self._base.keys() | set(self._overrides)

  def where(self, key: str) -> str:
    if key in self._overrides:
      source, own = self._overrides[key]
      return source.where(own)
    return self._base.where(key)

  def shape(self, key: str) -> tuple:
    if key in self._overrides:
      source, own = self._overrides[key]
      return tuple(source.shape(own))
    return tuple(self._base.shape(key))

  def get(self, key: str) -> np.ndarray:
    if key in self._overrides:
      source, own = self._overrides[key]
      w = source.get(own)
    else:
      w = self._base.get(key)
    if key not in self._deltas:
      return w
    weights, a, b, scale = self._deltas[key]
    delta = (weights.get(b).astype(np.float32) @ weights.get(a).astype(np.float32)) * np.float32(scale)
    return (w.astype(np.float32) + delta).astype(w.dtype)
