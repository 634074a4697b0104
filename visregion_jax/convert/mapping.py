"""Declarative HF <-> JAX name tables: rules, named transforms, expansion over layers.

A table is a tuple of `Rule`s; import and export walk the same expanded rules in
opposite directions, so a name can never be mapped one way and forgotten the other.
"""

import dataclasses
import re
from typing import Callable

import numpy as np

from visregion_jax.models.config import DecoderConfig

Path = tuple  # an NNX state path, e.g. ("layers", 3, "self_attn", "q_proj", "kernel")


@dataclasses.dataclass(frozen=True)
class Transform:
  """How one HF tensor becomes one or more of our parameters, and back."""
  name: str
  to_ours: Callable[[np.ndarray, DecoderConfig], tuple]
  to_hf: Callable[[tuple, DecoderConfig], np.ndarray]
  hf_shape: Callable[[tuple, DecoderConfig], tuple]  # our shapes -> the HF shape


def _split_rows(w: np.ndarray, sizes: list) -> tuple:
  """Splits a fused [out, in] HF weight by output rows into our [in, out] kernels."""
  bounds = np.cumsum(sizes)[:-1]
  return tuple(part.T for part in np.split(w, bounds, axis=0))


IDENTITY = Transform(
    "identity",
    to_ours=lambda w, c: (w,),
    to_hf=lambda ws, c: ws[0],
    hf_shape=lambda shapes, c: tuple(shapes[0]))

TRANSPOSE = Transform(
    "transpose",  # HF Linear weight [out, in] <-> our kernel [in, out]
    to_ours=lambda w, c: (w.T,),
    to_hf=lambda ws, c: ws[0].T,
    hf_shape=lambda shapes, c: tuple(reversed(shapes[0])))


def _qkv_sizes(c: DecoderConfig) -> list:
  return [c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.num_kv_heads * c.head_dim]


SPLIT_QKV = Transform(
    "split_qkv",  # Phi-3 qkv_proj [(H + 2K) * D, E] <-> q, k, v kernels
    to_ours=lambda w, c: _split_rows(w, _qkv_sizes(c)),
    to_hf=lambda ws, c: np.concatenate([w.T for w in ws], axis=0),
    hf_shape=lambda shapes, c: (sum(s[1] for s in shapes), shapes[0][0]))

SPLIT_GATE_UP = Transform(
    "split_gate_up",  # Phi-3 gate_up_proj [2M, E] <-> gate, up kernels (gate first)
    to_ours=lambda w, c: _split_rows(w, [c.intermediate_size, c.intermediate_size]),
    to_hf=lambda ws, c: np.concatenate([w.T for w in ws], axis=0),
    hf_shape=lambda shapes, c: (sum(s[1] for s in shapes), shapes[0][0]))


def always(config: DecoderConfig) -> bool:
  return True


@dataclasses.dataclass(frozen=True)
class Rule:
  """`hf` and `ours` are patterns; `{i}` stands for a decoder layer index."""
  hf: str
  ours: tuple
  transform: Transform = TRANSPOSE
  when: Callable[[DecoderConfig], bool] = always


@dataclasses.dataclass(frozen=True)
class Table:
  architecture: str
  hf_class: str
  rules: tuple
  ignored: tuple = ()  # regexes of HF keys that carry no weights (e.g. rotary inv_freq)

  def expand(self, config: DecoderConfig, num_layers: int) -> list:
    """Every (hf key, our paths, transform) this config has, layer rules per layer."""
    out = []
    for rule in self.rules:
      if not rule.when(config):
        continue
      layers = range(num_layers) if "{i}" in rule.hf else [None]
      for i in layers:
        hf = rule.hf.replace("{i}", str(i))
        ours = tuple(parse_path(p.replace("{i}", str(i))) for p in rule.ours)
        out.append((hf, ours, rule.transform))
    return out

  def is_ignored(self, hf_key: str) -> bool:
    return any(re.fullmatch(p, hf_key) for p in self.ignored)


def parse_path(dotted: str) -> Path:
  return tuple(int(p) if p.isdigit() else p for p in dotted.split("."))


def format_path(path: Path) -> str:
  return ".".join(str(p) for p in path)
