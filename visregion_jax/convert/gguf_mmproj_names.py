"""llama.cpp's names for LLaVA's vision tower and projector in an mmproj GGUF (the `clip` arch).

Keyed by the HF names of `vision_tables` (relative to the tower's root) and of llava's
projector table (relative to `multi_modal_projector.`), so our parameters reach these
names only through the tables import and export already use. `{i}` is a layer index.
HF's [out, in] linear weights and [out, in, kh, kw] patch convolution are exactly the
row-major layouts ggml's matmul and conv2d read, so no tensor is reshaped on the way.
"""

GGUF_TOWER_NAMES = (
    ("embeddings.patch_embedding.weight", "v.patch_embd.weight"),
    ("embeddings.patch_embedding.bias", "v.patch_embd.bias"),  # SigLIP
    ("embeddings.class_embedding", "v.class_embd"),  # CLIP
    ("embeddings.position_embedding.weight", "v.position_embd.weight"),
    ("pre_layrnorm.weight", "v.pre_ln.weight"),  # CLIP
    ("pre_layrnorm.bias", "v.pre_ln.bias"),
    ("encoder.layers.{i}.layer_norm1.weight", "v.blk.{i}.ln1.weight"),
    ("encoder.layers.{i}.layer_norm1.bias", "v.blk.{i}.ln1.bias"),
    ("encoder.layers.{i}.self_attn.q_proj.weight", "v.blk.{i}.attn_q.weight"),
    ("encoder.layers.{i}.self_attn.q_proj.bias", "v.blk.{i}.attn_q.bias"),
    ("encoder.layers.{i}.self_attn.k_proj.weight", "v.blk.{i}.attn_k.weight"),
    ("encoder.layers.{i}.self_attn.k_proj.bias", "v.blk.{i}.attn_k.bias"),
    ("encoder.layers.{i}.self_attn.v_proj.weight", "v.blk.{i}.attn_v.weight"),
    ("encoder.layers.{i}.self_attn.v_proj.bias", "v.blk.{i}.attn_v.bias"),
    ("encoder.layers.{i}.self_attn.out_proj.weight", "v.blk.{i}.attn_out.weight"),
    ("encoder.layers.{i}.self_attn.out_proj.bias", "v.blk.{i}.attn_out.bias"),
    ("encoder.layers.{i}.layer_norm2.weight", "v.blk.{i}.ln2.weight"),
    ("encoder.layers.{i}.layer_norm2.bias", "v.blk.{i}.ln2.bias"),
    ("encoder.layers.{i}.mlp.fc1.weight", "v.blk.{i}.ffn_up.weight"),
    ("encoder.layers.{i}.mlp.fc1.bias", "v.blk.{i}.ffn_up.bias"),
    ("encoder.layers.{i}.mlp.fc2.weight", "v.blk.{i}.ffn_down.weight"),
    ("encoder.layers.{i}.mlp.fc2.bias", "v.blk.{i}.ffn_down.bias"),
)

# Tower tensors LLaVA never reads: its features are hidden states taken before the final
# LayerNorm, and SigLIP's pooling head serves only the contrastive pooled output.
TOWER_LEFT_OUT = ("post_layernorm.", "head.")

# llama.cpp's `mlp` projector is mm.0 -> GELU -> mm.2 (mm.1 would be the activation).
GGUF_PROJECTOR_NAMES = (
    ("linear_1.weight", "mm.0.weight"),
    ("linear_1.bias", "mm.0.bias"),
    ("linear_2.weight", "mm.2.weight"),
    ("linear_2.bias", "mm.2.bias"),
)


def expand_names(names: tuple, num_layers: int) -> dict:
  """{HF name: GGUF name} with every `{i}` pattern written out for layers 0..num_layers-1."""
  out = {}
  for hf, gguf in names:
    for i in range(num_layers) if "{i}" in hf else [None]:
      out[hf.replace("{i}", str(i))] = gguf.replace("{i}", str(i))
  return out
