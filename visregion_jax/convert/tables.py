"""The name tables: one per architecture, shared by import and export."""

from visregion_jax.convert.mapping import IDENTITY, SPLIT_GATE_UP, SPLIT_QKV, TRANSPOSE, Rule, Table

_attention_bias = lambda c: c.attention_bias
_mlp_bias = lambda c: c.mlp_bias
_untied = lambda c: not c.tie_word_embeddings

_SHARED = (
    Rule("model.embed_tokens.weight", ("embed_tokens.embedding",), IDENTITY),
    Rule("model.norm.weight", ("norm.scale",), IDENTITY),
    Rule("lm_head.weight", ("lm_head.kernel",), TRANSPOSE, when=_untied),
    Rule("model.layers.{i}.input_layernorm.weight", ("layers.{i}.input_layernorm.scale",), IDENTITY),
    Rule("model.layers.{i}.post_attention_layernorm.weight",
         ("layers.{i}.post_attention_layernorm.scale",), IDENTITY),
    Rule("model.layers.{i}.self_attn.o_proj.weight", ("layers.{i}.self_attn.o_proj.kernel",)),
    Rule("model.layers.{i}.mlp.down_proj.weight", ("layers.{i}.mlp.down_proj.kernel",)),
)


def _llama_rules():
  rules = list(_SHARED)
  for name in ("q_proj", "k_proj", "v_proj"):
    rules.append(Rule(f"model.layers.{{i}}.self_attn.{name}.weight",
                      (f"layers.{{i}}.self_attn.{name}.kernel",)))
  for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
    rules.append(Rule(f"model.layers.{{i}}.self_attn.{name}.bias",
                      (f"layers.{{i}}.self_attn.{name}.bias",), IDENTITY, when=_attention_bias))
  for name in ("gate_proj", "up_proj"):
    rules.append(Rule(f"model.layers.{{i}}.mlp.{name}.weight", (f"layers.{{i}}.mlp.{name}.kernel",)))
  for name in ("gate_proj", "up_proj", "down_proj"):
    rules.append(Rule(f"model.layers.{{i}}.mlp.{name}.bias", (f"layers.{{i}}.mlp.{name}.bias",),
                      IDENTITY, when=_mlp_bias))
  return tuple(rules)


LLAMA = Table(
    architecture="llama", hf_class="LlamaForCausalLM", rules=_llama_rules(),
    # Old checkpoints store the rotary buffer; matched under any prefix (LLaVA nests the decoder).
    ignored=(r"(.+\.)?layers\.\d+\.self_attn\.rotary_emb\.inv_freq",))

PHI3 = Table(
    architecture="phi3", hf_class="Phi3ForCausalLM",
    rules=_SHARED + (
        Rule("model.layers.{i}.self_attn.qkv_proj.weight",
             ("layers.{i}.self_attn.q_proj.kernel", "layers.{i}.self_attn.k_proj.kernel",
              "layers.{i}.self_attn.v_proj.kernel"), SPLIT_QKV),
        Rule("model.layers.{i}.mlp.gate_up_proj.weight",
             ("layers.{i}.mlp.gate_proj.kernel", "layers.{i}.mlp.up_proj.kernel"), SPLIT_GATE_UP),
    ))

DECODER_TABLES = {t.architecture: t for t in (LLAMA, PHI3)}

# llama.cpp's tensor names for a Llama GGUF <-> HF names (then the LLAMA table applies),
# read by GGUF import and written by GGUF export. The third item names llama.cpp's Q/K
# row permutation (undone on import, applied on export), if any.
GGUF_LLAMA_NAMES = (
    ("token_embd.weight", "model.embed_tokens.weight", None),
    ("output_norm.weight", "model.norm.weight", None),
    ("output.weight", "lm_head.weight", None),
    ("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight", None),
    ("blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight", None),
    ("blk.{i}.attn_q.weight", "model.layers.{i}.self_attn.q_proj.weight", "heads"),
    ("blk.{i}.attn_k.weight", "model.layers.{i}.self_attn.k_proj.weight", "kv_heads"),
    ("blk.{i}.attn_v.weight", "model.layers.{i}.self_attn.v_proj.weight", None),
    ("blk.{i}.attn_output.weight", "model.layers.{i}.self_attn.o_proj.weight", None),
    ("blk.{i}.ffn_gate.weight", "model.layers.{i}.mlp.gate_proj.weight", None),
    ("blk.{i}.ffn_up.weight", "model.layers.{i}.mlp.up_proj.weight", None),
    ("blk.{i}.ffn_down.weight", "model.layers.{i}.mlp.down_proj.weight", None),
)

# Phi-3 keeps HF's fused qkv_proj / gate_up_proj (llama.cpp splits them when it loads)
# and its rotate-half RoPE (llama.cpp's NEOX mode), so no rows are permuted.
GGUF_PHI3_NAMES = (
    ("token_embd.weight", "model.embed_tokens.weight", None),
    ("output_norm.weight", "model.norm.weight", None),
    ("output.weight", "lm_head.weight", None),
    ("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight", None),
    ("blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight", None),
    ("blk.{i}.attn_qkv.weight", "model.layers.{i}.self_attn.qkv_proj.weight", None),
    ("blk.{i}.attn_output.weight", "model.layers.{i}.self_attn.o_proj.weight", None),
    ("blk.{i}.ffn_up.weight", "model.layers.{i}.mlp.gate_up_proj.weight", None),
    ("blk.{i}.ffn_down.weight", "model.layers.{i}.mlp.down_proj.weight", None),
)

GGUF_NAMES = {"llama": GGUF_LLAMA_NAMES, "phi3": GGUF_PHI3_NAMES}
