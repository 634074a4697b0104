"""Name tables of the CLIP / SigLIP vision towers, shared by import and export.

HF names are relative to the vision transformer's root, as transformers 5.24's
CLIPVisionModel / SiglipVisionModel name their parameters; a checkpoint's prefix
("vision_model.", LLaVA's "vision_tower.vision_model.", ...) is the caller's `rename`.
`ignored` patterns are relative to the same root.
"""

import numpy as np

from visregion_jax.convert.mapping import IDENTITY, TRANSPOSE, Rule, Table, Transform, always

CONV_KERNEL = Transform(
    "conv_kernel",  # HF Conv2d weight [out, in, kh, kw] <-> nnx.Conv kernel [kh, kw, in, out]
    to_ours=lambda w, c: (w.transpose(2, 3, 1, 0),),
    to_hf=lambda ws, c: ws[0].transpose(3, 2, 0, 1),
    hf_shape=lambda shapes, c: (shapes[0][3], shapes[0][2], shapes[0][0], shapes[0][1]))

SPLIT_IN_PROJ = Transform(
    "split_in_proj",  # nn.MultiheadAttention in_proj_weight [3D, D] <-> q, k, v kernels
    to_ours=lambda w, c: tuple(part.T for part in np.split(w, 3, axis=0)),
    to_hf=lambda ws, c: np.concatenate([w.T for w in ws], axis=0),
    hf_shape=lambda shapes, c: (sum(s[1] for s in shapes), shapes[0][0]))

SPLIT_IN_PROJ_BIAS = Transform(
    "split_in_proj_bias",  # in_proj_bias [3D] <-> q, k, v biases
    to_ours=lambda b, c: tuple(np.split(b, 3)),
    to_hf=lambda bs, c: np.concatenate(bs),
    hf_shape=lambda shapes, c: (sum(s[0] for s in shapes),))

_use_head = lambda c: c.use_head


def _norm(hf: str, ours: str, when=always) -> tuple:
  return (Rule(f"{hf}.weight", (f"{ours}.scale",), IDENTITY, when),
          Rule(f"{hf}.bias", (f"{ours}.bias",), IDENTITY, when))


def _linear(hf: str, ours: str, when=always) -> tuple:
  return (Rule(f"{hf}.weight", (f"{ours}.kernel",), TRANSPOSE, when),
          Rule(f"{hf}.bias", (f"{ours}.bias",), IDENTITY, when))


def _encoder_rules() -> tuple:
  rules = _norm("encoder.layers.{i}.layer_norm1", "layers.{i}.layer_norm1")
  rules += _norm("encoder.layers.{i}.layer_norm2", "layers.{i}.layer_norm2")
  for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
    rules += _linear(f"encoder.layers.{{i}}.self_attn.{name}", f"layers.{{i}}.self_attn.{name}")
  for name in ("fc1", "fc2"):
    rules += _linear(f"encoder.layers.{{i}}.mlp.{name}", f"layers.{{i}}.mlp.{name}")
  return rules + _norm("post_layernorm", "post_layernorm")


_POSITIONS = Rule("embeddings.position_embedding.weight", ("position_embedding",), IDENTITY)
_IGNORED = (r"embeddings\.position_ids",)  # a buffer older transformers saved

CLIP_VISION = Table(
    architecture="clip", hf_class="CLIPVisionModel", ignored=_IGNORED,
    rules=(
        Rule("embeddings.patch_embedding.weight", ("patch_embedding.kernel",), CONV_KERNEL),
        Rule("embeddings.class_embedding", ("class_embedding",), IDENTITY),
        _POSITIONS,
        *_norm("pre_layrnorm", "pre_layrnorm"),
    ) + _encoder_rules())

SIGLIP_VISION = Table(
    architecture="siglip", hf_class="SiglipVisionModel", ignored=_IGNORED,
    rules=(
        Rule("embeddings.patch_embedding.weight", ("patch_embedding.kernel",), CONV_KERNEL),
        Rule("embeddings.patch_embedding.bias", ("patch_embedding.bias",), IDENTITY),
        _POSITIONS,
    ) + _encoder_rules() + (
        Rule("head.probe", ("head.probe",), IDENTITY, when=_use_head),
        Rule("head.attention.in_proj_weight",
             tuple(f"head.attention.{n}.kernel" for n in ("q_proj", "k_proj", "v_proj")),
             SPLIT_IN_PROJ, when=_use_head),
        Rule("head.attention.in_proj_bias",
             tuple(f"head.attention.{n}.bias" for n in ("q_proj", "k_proj", "v_proj")),
             SPLIT_IN_PROJ_BIAS, when=_use_head),
        *_linear("head.attention.out_proj", "head.attention.out_proj", when=_use_head),
        *_norm("head.layernorm", "head.layernorm", when=_use_head),
        *_linear("head.mlp.fc1", "head.mlp.fc1", when=_use_head),
        *_linear("head.mlp.fc2", "head.mlp.fc2", when=_use_head),
    ))

VISION_TABLES = {t.architecture: t for t in (CLIP_VISION, SIGLIP_VISION)}
