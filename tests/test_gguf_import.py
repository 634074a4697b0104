"""GGUF import against references built in this file, never against our own converter.

Each test writes its own llama.cpp-style GGUF from a random transformers Llama: HF
names renamed to llama.cpp's, Q/K rows permuted the way convert_hf_to_gguf.py does
it, and weights quantized with `gguf.quants`. The expected values come from the
unpermuted HF weights (quantized and dequantized here), so a wrong un-permutation,
renaming or metadata mapping in the importer shows up as a logit mismatch. K-quant
blocks (which `gguf.quants` cannot quantize) are packed by hand from known integers
following llama.cpp's block layout, so their expected values are known exactly.
"""

import copy

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import random_hf_model

from visregion_jax import convert
from visregion_jax.convert.gguf_file import GGUFSource
from visregion_jax.errors import VisRegionError

Q = gguf.GGMLQuantizationType
QK_K = 256
# Not the defaults (10000 / 1e-6), so a metadata key the importer ignored would show.
ROPE_THETA = 50000.0
RMS_EPS = 1e-5

# llama.cpp's names (convert_hf_to_gguf.py / gguf-py tensor_mapping), written out here
# rather than taken from the importer's table so a wrong entry there is caught.
TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
LAYER_NAMES = {"input_layernorm.weight": "attn_norm.weight",
               "post_attention_layernorm.weight": "ffn_norm.weight",
               "self_attn.q_proj.weight": "attn_q.weight",
               "self_attn.k_proj.weight": "attn_k.weight",
               "self_attn.v_proj.weight": "attn_v.weight",
               "self_attn.o_proj.weight": "attn_output.weight",
               "mlp.gate_proj.weight": "ffn_gate.weight",
               "mlp.up_proj.weight": "ffn_up.weight",
               "mlp.down_proj.weight": "ffn_down.weight"}


def llama_cpp_name(hf_name: str) -> str:
  if hf_name in TOP_NAMES:
    return TOP_NAMES[hf_name]
  _, _, layer, rest = hf_name.split(".", 3)
  return f"blk.{layer}.{LAYER_NAMES[rest]}"


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """convert_hf_to_gguf.py's LlamaModel.permute: interleaves the rotary halves per head."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_config(**overrides) -> transformers.LlamaConfig:
  kwargs = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, rope_theta=ROPE_THETA,
                rms_norm_eps=RMS_EPS, max_position_embeddings=512, tie_word_embeddings=False,
                bos_token_id=1, eos_token_id=2)
  kwargs.update(overrides)
  return transformers.LlamaConfig(**kwargs)


def metadata_writers(writer: gguf.GGUFWriter, config) -> dict:
  """Metadata key (as named for a llama file) -> the GGUFWriter call that writes it."""
  return {
      "llama.block_count": lambda: writer.add_block_count(config.num_hidden_layers),
      "llama.context_length": lambda: writer.add_context_length(config.max_position_embeddings),
      "llama.embedding_length": lambda: writer.add_embedding_length(config.hidden_size),
      "llama.feed_forward_length": lambda: writer.add_feed_forward_length(config.intermediate_size),
      "llama.attention.head_count": lambda: writer.add_head_count(config.num_attention_heads),
      "llama.attention.head_count_kv": lambda: writer.add_head_count_kv(config.num_key_value_heads),
      "llama.rope.freq_base": lambda: writer.add_rope_freq_base(ROPE_THETA),
      "llama.attention.layer_norm_rms_epsilon": lambda: writer.add_layer_norm_rms_eps(RMS_EPS),
      "llama.vocab_size": lambda: writer.add_vocab_size(config.vocab_size),
      "tokenizer.ggml.bos_token_id": lambda: writer.add_bos_token_id(config.bos_token_id),
      "tokenizer.ggml.eos_token_id": lambda: writer.add_eos_token_id(config.eos_token_id),
  }


def write_gguf(path, config, tensors, arch: str = "llama", omit=()) -> str:
  """tensors: [(llama.cpp name, array as gguf.quants.quantize returns it, GGML type)]."""
  writer = gguf.GGUFWriter(str(path), arch)
  for key, add in metadata_writers(writer, config).items():
    if key not in omit:
      add()
  for name, data, qtype in tensors:
    # Quantized data is uint8 [rows, bytes per row]; the writer turns that back into
    # the element shape from raw_dtype's block size.
    writer.add_tensor(name, data, raw_dtype=qtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return str(path)


def gguf_tensors(hf, qtype):
  """(llama.cpp tensors, the HF weights they decode to), as llama-quantize would write them.

  Matrices get `qtype`; 1-D norm weights stay F32 as in llama.cpp. The expected
  weights are quantized and dequantized from the *unpermuted* HF tensors: block
  quantization runs along rows and the permutation only reorders rows, so these are
  exactly what a correct importer must recover.
  """
  config = hf.config
  tensors, expected = [], {}
  for name, p in hf.named_parameters():  # named_parameters lists a tied lm_head once
    w = p.detach().float().numpy()
    t = qtype if w.ndim == 2 else Q.F32
    expected[name] = np.array(gguf.quants.dequantize(gguf.quants.quantize(w, t), t),
                              np.float32).reshape(w.shape)
    if name.endswith("self_attn.q_proj.weight"):
      w = llama_cpp_permute(w, config.num_attention_heads)
    elif name.endswith("self_attn.k_proj.weight"):
      w = llama_cpp_permute(w, config.num_key_value_heads)
    tensors.append((llama_cpp_name(name), gguf.quants.quantize(w, t), t))
  return tensors, expected


def with_weights(hf, weights: dict):
  """A copy of the transformers model with its parameters replaced."""
  hf = copy.deepcopy(hf)
  with torch.no_grad():
    for name, p in hf.named_parameters():
      p.copy_(torch.from_numpy(weights[name]))
  return hf


def torch_logits(hf, ids: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return hf(torch.tensor(ids)).logits.float().numpy()


def our_logits(path: str, ids: np.ndarray) -> np.ndarray:
  model = convert.from_hf(path, dtype="float32")
  return np.asarray(model(jnp.asarray(ids)))


IDS = np.random.RandomState(0).randint(0, 256, size=(2, 13))


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1], ids=lambda q: q.name)
def test_quantized_llama_matches_transformers_on_dequantized_weights(qtype, tmp_path):
  hf = random_hf_model(tiny_config())
  tensors, expected = gguf_tensors(hf, qtype)
  path = write_gguf(tmp_path / "m.gguf", hf.config, tensors)
  types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
  assert types["blk.0.attn_q.weight"] == qtype and types["blk.0.attn_norm.weight"] == Q.F32

  # Tensor by tensor first, so a failure names the tensor (renaming / un-permutation).
  source = GGUFSource(path)
  assert source.keys() == set(expected)
  for name, w in expected.items():
    np.testing.assert_allclose(source.get(name), w, rtol=0, atol=1e-6, err_msg=name)

  got = our_logits(path, IDS)
  np.testing.assert_allclose(got, torch_logits(with_weights(hf, expected), IDS), rtol=0, atol=1e-4)
  if qtype == Q.F32:  # lossless: the original model itself
    np.testing.assert_allclose(got, torch_logits(hf, IDS), rtol=0, atol=1e-4)


@pytest.mark.parametrize("qtype", [Q.F32, Q.Q8_0], ids=lambda q: q.name)
def test_tied_embeddings_without_output_tensor(qtype, tmp_path):
  hf = random_hf_model(tiny_config(tie_word_embeddings=True))
  tensors, expected = gguf_tensors(hf, qtype)
  assert "output.weight" not in {name for name, _, _ in tensors}
  path = write_gguf(tmp_path / "tied.gguf", hf.config, tensors)
  model = convert.from_hf(path, dtype="float32")
  assert model.config.tie_word_embeddings
  got = np.asarray(model(jnp.asarray(IDS)))
  np.testing.assert_allclose(got, torch_logits(with_weights(hf, expected), IDS), rtol=0, atol=1e-4)


def test_config_read_from_metadata(tmp_path):
  hf = random_hf_model(tiny_config())
  tensors, _ = gguf_tensors(hf, Q.F32)
  c = convert.from_hf(write_gguf(tmp_path / "m.gguf", hf.config, tensors), dtype="float32").config
  assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size) == (2, 64, 4, 2, 256)
  assert c.rope_theta == ROPE_THETA
  assert c.rms_norm_eps == pytest.approx(RMS_EPS)
  assert not c.tie_word_embeddings


# ---- K-quants: blocks packed by hand per llama.cpp's ggml-common.h / ggml-quants.c ----
#
# block_q4_K (144 bytes, 256 values): half d, half dmin, uint8 scales[12], uint8 qs[128].
#   8 sub-blocks of 32 with 6-bit scale sc[s] and min m[s]; value = d*sc[s]*q - dmin*m[s],
#   q a 4-bit quant; s = i // 32. qs[32c + l] holds q[64c + l] (low) and q[64c + 32 + l] (high).
# block_q6_K (210 bytes, 256 values): uint8 ql[128], uint8 qh[64], int8 scales[16], half d.
#   value = d*scales[i // 16]*(q - 32), q a 6-bit quant split into 4 low bits (ql) and 2
#   high bits (qh), packed per 128-value half as llama.cpp's quantize_row_q6_K does.


def pack_q4_k(d, dmin, sc, m, q) -> np.ndarray:
  """Known fields -> block_q4_K bytes [n, 144]; the inverse of get_scale_min_k4."""
  scales = np.zeros((len(d), 12), np.uint8)
  for j in range(4):
    scales[:, j] = (sc[:, j] & 63) | ((sc[:, j + 4] >> 4) << 6)
    scales[:, j + 4] = (m[:, j] & 63) | ((m[:, j + 4] >> 4) << 6)
    scales[:, j + 8] = (sc[:, j + 4] & 0xF) | ((m[:, j + 4] & 0xF) << 4)
  qs = np.zeros((len(d), 128), np.uint8)
  for c in range(4):
    qs[:, 32 * c:32 * c + 32] = q[:, 64 * c:64 * c + 32] | (q[:, 64 * c + 32:64 * c + 64] << 4)
  return np.concatenate([d.astype("<f2")[:, None].view(np.uint8),
                         dmin.astype("<f2")[:, None].view(np.uint8), scales, qs], axis=1)


def pack_q6_k(d, sc, q) -> np.ndarray:
  """Known fields (q = quant + 32 in 0..63) -> block_q6_K bytes [n, 210]."""
  ql = np.zeros((len(d), 128), np.uint8)
  qh = np.zeros((len(d), 64), np.uint8)
  for h in range(2):  # two halves of 128 values
    L = q[:, 128 * h:128 * h + 128]
    ql[:, 64 * h:64 * h + 32] = (L[:, 0:32] & 0xF) | ((L[:, 64:96] & 0xF) << 4)
    ql[:, 64 * h + 32:64 * h + 64] = (L[:, 32:64] & 0xF) | ((L[:, 96:128] & 0xF) << 4)
    qh[:, 32 * h:32 * h + 32] = ((L[:, 0:32] >> 4) | ((L[:, 32:64] >> 4) << 2)
                                 | ((L[:, 64:96] >> 4) << 4) | ((L[:, 96:128] >> 4) << 6))
  return np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8),
                         d.astype("<f2")[:, None].view(np.uint8)], axis=1)


def dequantize_row_q4_k(block: bytes) -> np.ndarray:
  """llama.cpp's dequantize_row_q4_K for one block, transcribed loop by loop."""
  d = np.float32(np.frombuffer(block[0:2], "<f2")[0])
  dmin = np.float32(np.frombuffer(block[2:4], "<f2")[0])
  scales, qs = block[4:16], block[16:144]

  def get_scale_min_k4(j):
    if j < 4:
      return scales[j] & 63, scales[j + 4] & 63
    return ((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))

  y = []
  for c in range(4):
    sc1, m1 = get_scale_min_k4(2 * c)
    sc2, m2 = get_scale_min_k4(2 * c + 1)
    d1, min1 = d * np.float32(sc1), dmin * np.float32(m1)
    d2, min2 = d * np.float32(sc2), dmin * np.float32(m2)
    q = qs[32 * c:32 * c + 32]
    y += [d1 * np.float32(q[l] & 0xF) - min1 for l in range(32)]
    y += [d2 * np.float32(q[l] >> 4) - min2 for l in range(32)]
  return np.array(y, np.float32)


def dequantize_row_q6_k(block: bytes) -> np.ndarray:
  """llama.cpp's dequantize_row_q6_K for one block, transcribed loop by loop."""
  d = np.float32(np.frombuffer(block[208:210], "<f2")[0])
  y = np.zeros(256, np.float32)
  for n in range(2):
    ql, qh = block[64 * n:64 * n + 64], block[128 + 32 * n:128 + 32 * n + 32]
    sc = np.frombuffer(block[192 + 8 * n:192 + 8 * n + 8], np.int8)
    for l in range(32):
      s = l // 16
      q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32
      q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32
      q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
      q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32
      for off, scale, q in ((0, sc[s], q1), (32, sc[s + 2], q2), (64, sc[s + 4], q3), (96, sc[s + 6], q4)):
        y[128 * n + l + off] = d * np.float32(scale) * np.float32(q)
  return y


def random_q4_k(rng, rows: int, cols: int):
  """(bytes [rows, cols/256*144], expected float32 [rows, cols]) from random known fields."""
  n = rows * cols // QK_K
  d = rng.uniform(6.2e-5, 1.2e-4, n).astype(np.float16)  # weights of order 0.02
  dmin = (d.astype(np.float32) * rng.uniform(6, 9, n)).astype(np.float16)
  sc = rng.randint(0, 64, (n, 8)).astype(np.uint8)
  m = rng.randint(0, 64, (n, 8)).astype(np.uint8)
  q = rng.randint(0, 16, (n, QK_K)).astype(np.uint8)
  sub = np.arange(QK_K) // 32
  expected = ((d.astype(np.float32)[:, None] * sc[:, sub].astype(np.float32)) * q.astype(np.float32)
              - dmin.astype(np.float32)[:, None] * m[:, sub].astype(np.float32))
  return pack_q4_k(d, dmin, sc, m, q).reshape(rows, -1), expected.reshape(rows, cols)


def random_q6_k(rng, rows: int, cols: int):
  n = rows * cols // QK_K
  d = rng.uniform(6.2e-5, 1.2e-4, n).astype(np.float16)
  sc = rng.randint(-20, 21, (n, 16))
  q = rng.randint(0, 64, (n, QK_K)).astype(np.uint8)
  sub = np.arange(QK_K) // 16
  expected = ((d.astype(np.float32)[:, None] * sc[:, sub].astype(np.float32))
              * (q.astype(np.float32) - 32))
  return pack_q6_k(d, sc, q).reshape(rows, -1), expected.reshape(rows, cols)


def test_k_quant_references_agree_with_the_spec_by_hand():
  """The packers and the transcribed decoders agree, and a hand-decodable Q4_K block decodes as stated."""
  rng = np.random.RandomState(1)
  for make, decode, size in ((random_q4_k, dequantize_row_q4_k, 144), (random_q6_k, dequantize_row_q6_k, 210)):
    data, expected = make(rng, 3, 512)
    assert data.shape == (3, 2 * size)
    blocks = data.reshape(-1, size)
    np.testing.assert_array_equal(np.stack([decode(b.tobytes()) for b in blocks]), expected.reshape(-1, 256))

  # Every sub-block scale 1 and min 0: value 64c + l is d*(low nibble of qs[32c + l]),
  # value 64c + 32 + l its high nibble.
  qs = rng.randint(0, 256, 128).astype(np.uint8)
  block = (np.float16(0.5).tobytes() + np.float16(3.0).tobytes()
           + bytes([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]) + qs.tobytes())
  want = np.zeros(256, np.float32)
  for c in range(4):
    for l in range(32):
      want[64 * c + l] = 0.5 * (qs[32 * c + l] & 0xF)
      want[64 * c + 32 + l] = 0.5 * (qs[32 * c + l] >> 4)
  np.testing.assert_array_equal(dequantize_row_q4_k(block), want)


def test_k_quant_mlp_weights_decode_to_the_llama_cpp_values(tmp_path):
  hf = random_hf_model(tiny_config(hidden_size=256, intermediate_size=256, num_hidden_layers=2))
  tensors, expected = gguf_tensors(hf, Q.F32)
  rng = np.random.RandomState(2)
  kinds = {0: {"gate_proj": Q.Q4_K, "up_proj": Q.Q4_K, "down_proj": Q.Q6_K},
           1: {"gate_proj": Q.Q6_K, "up_proj": Q.Q6_K, "down_proj": Q.Q4_K}}
  replaced = {}
  for layer, per_name in kinds.items():
    for name, qtype in per_name.items():
      hf_name = f"model.layers.{layer}.mlp.{name}.weight"
      rows, cols = expected[hf_name].shape
      data, values = (random_q4_k if qtype == Q.Q4_K else random_q6_k)(rng, rows, cols)
      replaced[llama_cpp_name(hf_name)] = (data, qtype)
      expected[hf_name] = values
  tensors = [(name, *replaced.get(name, (data, qtype))) for name, data, qtype in tensors]
  path = write_gguf(tmp_path / "k.gguf", hf.config, tensors)
  assert {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}["blk.0.ffn_up.weight"] == Q.Q4_K

  source = GGUFSource(path)
  assert source.shape("model.layers.0.mlp.up_proj.weight") == (256, 256)
  for layer in kinds:
    for name in ("gate_proj", "up_proj", "down_proj"):
      hf_name = f"model.layers.{layer}.mlp.{name}.weight"
      np.testing.assert_allclose(source.get(hf_name), expected[hf_name], rtol=0, atol=1e-6, err_msg=hf_name)

  ref = torch_logits(with_weights(hf, expected), IDS)
  np.testing.assert_allclose(our_logits(path, IDS), ref, rtol=0, atol=1e-4 * max(1.0, np.abs(ref).max()))


# ---- files the importer must refuse with a one-line error naming the key ----


def small_llama_tensors():
  hf = random_hf_model(tiny_config(num_hidden_layers=1))
  return hf.config, gguf_tensors(hf, Q.F32)[0]


def test_other_architecture_is_refused(tmp_path):
  config, tensors = small_llama_tensors()
  path = write_gguf(tmp_path / "gpt2.gguf", config, tensors, arch="gpt2")
  with pytest.raises(VisRegionError, match=r"general\.architecture") as info:
    convert.from_hf(path)
  assert "gpt2" in str(info.value)


@pytest.mark.parametrize("key", ["llama.block_count", "llama.embedding_length",
                                 "llama.feed_forward_length", "llama.attention.head_count",
                                 "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size"])
def test_missing_required_metadata_is_named(key, tmp_path):
  config, tensors = small_llama_tensors()
  path = write_gguf(tmp_path / "missing.gguf", config, tensors, omit=(key,))
  with pytest.raises(VisRegionError, match=key.replace(".", r"\.")):
    convert.from_hf(path)
