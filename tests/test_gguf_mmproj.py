"""The mmproj GGUF: what llama.cpp's multimodal loader reads, checked by our own reading and by
llama.cpp itself (llama-cpp-python) against the LVLM's image features."""

import base64
import ctypes
import importlib.util
import io
import json
import os
import re

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from conftest import random_llava_model
from PIL import Image

from visregion_jax import convert
from visregion_jax.convert.gguf_file import resolve_model_path
from visregion_jax.convert.gguf_mmproj import write_mmproj
from visregion_jax.convert.gguf_mmproj_names import GGUF_PROJECTOR_NAMES, GGUF_TOWER_NAMES, TOWER_LEFT_OUT
from visregion_jax.convert.llava import LLAVA_PROJECTOR
from visregion_jax.convert.vision_tables import VISION_TABLES
from visregion_jax.errors import VisRegionError
from visregion_jax.models import attention
from visregion_jax.models.lvlm import LVLM, abstract_lvlm

IMAGE, PATCH = 28, 7  # 16 patches
TEXT_HIDDEN = 576  # SmolLM2-135M's: llama.cpp checks the projector's output against its decoder
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
LLAMA_CPP_WHEEL = "install ../shared/wheels/llama_cpp_python-*.whl (llama.cpp's Python bindings)"


def llava_dir(path, kind: str, seed=0, **overrides) -> str:
  """A random llava-hf model with a tiny tower and a SmolLM2-wide projector, saved with a
  preprocessor_config.json whose mean / std are not the defaults."""
  vision_cls = transformers.CLIPVisionConfig if kind == "clip" else transformers.SiglipVisionConfig
  vision = vision_cls(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                      image_size=IMAGE, patch_size=PATCH)
  text = transformers.LlamaConfig(vocab_size=128, hidden_size=TEXT_HIDDEN, intermediate_size=64,
                                  num_hidden_layers=1, num_attention_heads=9, num_key_value_heads=3)
  cfg = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=120, **overrides)
  random_llava_model(cfg, seed).save_pretrained(path)
  processor = ({"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": IMAGE},
                "crop_size": {"height": IMAGE, "width": IMAGE}} if kind == "clip" else
               {"image_processor_type": "SiglipImageProcessor", "size": {"height": IMAGE, "width": IMAGE}})
  with open(os.path.join(path, "preprocessor_config.json"), "w", encoding="utf-8") as f:
    json.dump({**processor, "image_mean": MEAN, "image_std": STD}, f)
  return str(path)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  return llava_dir(tmp_path_factory.mktemp("clip"), "clip")


@pytest.fixture(scope="module")
def clip_model(clip_dir):
  return convert.from_hf(clip_dir)


def hf_state(path) -> dict:
  model = transformers.LlavaForConditionalGeneration.from_pretrained(path)
  return {k: v.float().numpy() for k, v in model.state_dict().items()}


def read(path):
  """(reader, {key: value}, {name: tensor}) of a GGUF file."""
  reader = gguf.GGUFReader(path)
  return reader, {k: f.contents() for k, f in reader.fields.items()}, {t.name: t for t in reader.tensors}


def dequantized(tensor) -> np.ndarray:
  """A GGUF tensor as float32 in numpy (HF) order: ggml lists dimensions innermost first."""
  w = gguf.dequantize(tensor.data, tensor.tensor_type)
  return np.asarray(w, np.float32).reshape(tuple(int(n) for n in reversed(tensor.shape)))


# The test's own reading of llama.cpp's clip names (tools/mtmd/clip-impl.h), as HF keys.
_HF_OF_GGUF = (
    (r"v\.patch_embd\.(weight|bias)", r"embeddings.patch_embedding.\1"),
    (r"v\.class_embd", r"embeddings.class_embedding"),
    (r"v\.position_embd\.weight", r"embeddings.position_embedding.weight"),
    (r"v\.pre_ln\.(weight|bias)", r"pre_layrnorm.\1"),
    (r"v\.blk\.(\d+)\.ln([12])\.(weight|bias)", r"encoder.layers.\1.layer_norm\2.\3"),
    (r"v\.blk\.(\d+)\.attn_([qkv])\.(weight|bias)", r"encoder.layers.\1.self_attn.\2_proj.\3"),
    (r"v\.blk\.(\d+)\.attn_out\.(weight|bias)", r"encoder.layers.\1.self_attn.out_proj.\2"),
    (r"v\.blk\.(\d+)\.ffn_up\.(weight|bias)", r"encoder.layers.\1.mlp.fc1.\2"),
    (r"v\.blk\.(\d+)\.ffn_down\.(weight|bias)", r"encoder.layers.\1.mlp.fc2.\2"),
)


def hf_key(gguf_name: str, state: dict) -> str:
  projector = re.fullmatch(r"mm\.([02])\.(weight|bias)", gguf_name)
  if projector:
    layer = {"0": "linear_1", "2": "linear_2"}[projector.group(1)]
    return f"model.multi_modal_projector.{layer}.{projector.group(2)}"
  for pattern, hf in _HF_OF_GGUF:
    if re.fullmatch(pattern, gguf_name):
      key = "model.vision_tower." + re.sub(pattern, hf, gguf_name)
      assert key in state, key
      return key
  raise AssertionError(f"unexpected tensor {gguf_name}")


def test_f32_file_reads_back_exactly(clip_dir, clip_model, tmp_path):
  """Every tensor equals transformers' weight bit for bit; the metadata says what llama.cpp
  needs: feature layer -2 of 3 blocks is hidden state 2, so blocks 0 and 1 and no final norm."""
  path = str(tmp_path / "mmproj.gguf")
  write_mmproj(clip_model, path, tensor_type="f32")
  reader, fields, tensors = read(path)
  state = hf_state(clip_dir)
  for name, tensor in tensors.items():
    assert tensor.tensor_type == gguf.GGMLQuantizationType.F32, name
    np.testing.assert_array_equal(dequantized(tensor), state[hf_key(name, state)], err_msg=name)
  per_block = {"ln1", "ln2", "attn_q", "attn_k", "attn_v", "attn_out", "ffn_up", "ffn_down"}
  expected = {"v.patch_embd.weight", "v.class_embd", "v.position_embd.weight", "v.pre_ln.weight",
              "v.pre_ln.bias", "mm.0.weight", "mm.0.bias", "mm.2.weight", "mm.2.bias"}
  expected |= {f"v.blk.{i}.{n}.{p}" for i in (0, 1) for n in per_block for p in ("weight", "bias")}
  assert set(tensors) == expected
  assert fields["general.architecture"] == "clip"
  assert fields["clip.projector_type"] == "mlp"
  assert fields["clip.has_vision_encoder"] is True
  assert fields["clip.use_gelu"] is False  # CLIP's quick_gelu, llama.cpp's default
  assert fields["clip.vision.feature_layer"] == [2]
  uint32 = {"clip.vision.image_size": IMAGE, "clip.vision.patch_size": PATCH,
            "clip.vision.embedding_length": 48, "clip.vision.feed_forward_length": 96,
            "clip.vision.projection_dim": TEXT_HIDDEN, "clip.vision.block_count": 2,
            "clip.vision.attention.head_count": 4}
  for key, value in uint32.items():
    assert fields[key] == value, key
    assert reader.fields[key].types == [gguf.GGUFValueType.UINT32], key  # llama.cpp asserts the type
  assert fields["clip.vision.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
  np.testing.assert_allclose(fields["clip.vision.image_mean"], MEAN, rtol=1e-7)
  np.testing.assert_allclose(fields["clip.vision.image_std"], STD, rtol=1e-7)


@pytest.mark.parametrize("tensor_type", ["f16", "bf16", "q8_0"])
def test_reduced_types_follow_llama_cpp(clip_dir, clip_model, tmp_path, tensor_type):
  """Norms, biases and embeddings stay f32, the patch kernel is f16 only in f16 files, and
  q8_0 falls back to f16 for rows that are not whole 32-value blocks (the tower's 48)."""
  path = str(tmp_path / "mmproj.gguf")
  write_mmproj(clip_model, path, tensor_type=tensor_type)
  _, _, tensors = read(path)
  state = hf_state(clip_dir)
  qt = gguf.GGMLQuantizationType
  requested = {"f16": qt.F16, "bf16": qt.BF16, "q8_0": qt.Q8_0}[tensor_type]
  for name, tensor in tensors.items():
    shape = tuple(reversed(tensor.shape.tolist()))
    if len(shape) == 1 or name in ("v.class_embd", "v.position_embd.weight"):
      want = qt.F32
    elif name == "v.patch_embd.weight":
      want = qt.F16 if tensor_type == "f16" else qt.F32
    elif tensor_type == "q8_0" and shape[-1] % 32:
      want = qt.F16
    else:
      want = requested
    assert tensor.tensor_type == want, name
    ref = state[hf_key(name, state)]
    tol = {qt.F32: 0, qt.F16: 1e-3, qt.BF16: 8e-3, qt.Q8_0: 1 / 127}[want]
    np.testing.assert_allclose(dequantized(tensor), ref, rtol=0, atol=tol * np.abs(ref).max() + 1e-8,
                               err_msg=name)
  assert any(t.tensor_type == requested for t in tensors.values())


def test_write_is_atomic(clip_model, tmp_path, monkeypatch):
  """A failure while writing leaves the previous file as it was and nothing beside it."""
  path = tmp_path / "mmproj.gguf"
  path.write_bytes(b"previous")

  def fail(*args):
    raise OSError("disk full")

  monkeypatch.setattr(gguf.quants, "quantize", fail)
  with pytest.raises(OSError, match="disk full"):
    write_mmproj(clip_model, str(path), tensor_type="f32")
  assert path.read_bytes() == b"previous"
  assert os.listdir(tmp_path) == ["mmproj.gguf"]
  monkeypatch.undo()
  write_mmproj(clip_model, str(path), tensor_type="f32")
  assert gguf.GGUFReader(str(path)).fields["general.architecture"].contents() == "clip"
  assert os.listdir(tmp_path) == ["mmproj.gguf"]


def _changed(model: LVLM, **changes) -> LVLM:
  """A shape-only LVLM with a changed config: the checks run before any weight is read."""
  vision = changes.pop("vision", {})
  return abstract_lvlm(model.config.replace(vision=model.config.vision.replace(**vision), **changes))


BAD = [
    (dict(projector_type="mlp3x_gelu"), "projector_type"),
    (dict(projector_type="linear"), "projector_type"),
    (dict(projector_bias=False), "projector_type"),
    (dict(feature_strategy="full"), "feature_strategy"),  # CLIP's class token kept
    (dict(vision=dict(kind="siglip")), "feature_strategy"),  # a SigLIP patch dropped
    (dict(feature_layers=(-2, -3)), "feature_layers"),
    (dict(feature_layers=(2, -2)), "feature_layers"),
    (dict(feature_layers=(-5,)), "feature_layers"),
    (dict(vision=dict(intermediate_size=48)), "vision.intermediate_size"),
]


@pytest.mark.parametrize("change, key", BAD, ids=[k + "-" + str(i) for i, (_, k) in enumerate(BAD)])
def test_what_llama_cpp_cannot_run_is_refused(clip_model, tmp_path, change, key):
  model = _changed(clip_model, **change)
  path = tmp_path / "mmproj.gguf"
  with pytest.raises(VisRegionError, match=f"^{re.escape(key)}: "):
    write_mmproj(model, str(path), tensor_type="f16")
  assert not os.listdir(tmp_path)


def test_bad_type_and_non_lvlm(clip_model, tmp_path):
  with pytest.raises(VisRegionError, match="^tensor_type: .*q4_0"):
    write_mmproj(clip_model, str(tmp_path / "a.gguf"), tensor_type="q4_0")
  with pytest.raises(VisRegionError, match="^model: expected an LVLM"):
    write_mmproj(clip_model.language_model, str(tmp_path / "b.gguf"), tensor_type="f32")
  assert not os.listdir(tmp_path)


def test_every_table_tensor_has_a_gguf_name_or_a_reason():
  """A rule added to the vision or projector tables cannot be silently dropped from mmproj files."""
  named = {hf for hf, _ in GGUF_TOWER_NAMES}
  for table in VISION_TABLES.values():
    for rule in table.rules:
      assert rule.hf in named or rule.hf.startswith(TOWER_LEFT_OUT), rule.hf
  assert {r.hf for r in LLAVA_PROJECTOR.rules} == {hf for hf, _ in GGUF_PROJECTOR_NAMES}


# ---- llama.cpp itself -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host():
  """llama.cpp's multimodal context needs a decoder whose width the projector feeds:
  SmolLM2-135M (576) serves, its weights play no part in the image embeddings."""
  llama_cpp = pytest.importorskip("llama_cpp", reason=LLAMA_CPP_WHEEL)
  try:
    path = resolve_model_path("smollm2-135m-instruct")
  except VisRegionError as e:
    pytest.skip(str(e))
  llm = llama_cpp.Llama(model_path=path, n_ctx=128, n_threads=2, verbose=False)
  yield llm
  llm.close()


def llama_cpp_image_embeddings(mmproj: str, llm, rgb: np.ndarray) -> np.ndarray:
  """What llama.cpp hands its decoder for one uint8 RGB image: [tokens, decoder width]."""
  from llama_cpp import mtmd_cpp as mtmd  # pylint: disable=import-outside-toplevel
  params = mtmd.mtmd_context_params_default()
  params.use_gpu, params.n_threads, params.print_timings, params.warmup = False, 2, False, False
  ctx = mtmd.mtmd_init_from_file(mmproj.encode(), llm.model, params)
  assert ctx, "llama.cpp refused the mmproj file"
  pixels = (ctypes.c_uint8 * rgb.size).from_buffer_copy(np.ascontiguousarray(rgb).tobytes())
  bitmap = mtmd.mtmd_bitmap_init(rgb.shape[1], rgb.shape[0], pixels)
  chunks = mtmd.mtmd_input_chunks_init()
  try:
    text = mtmd.mtmd_input_text()
    text.text = text_bytes = mtmd.mtmd_default_marker()
    text.text_len, text.add_special, text.parse_special = len(text_bytes), False, True
    assert mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(text), (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) == 0
    images = [mtmd.mtmd_input_chunks_get(chunks, i) for i in range(mtmd.mtmd_input_chunks_size(chunks))]
    images = [c for c in images if mtmd.mtmd_input_chunk_get_type(c) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE]
    assert len(images) == 1
    tokens = mtmd.mtmd_input_chunk_get_n_tokens(images[0])
    assert mtmd.mtmd_encode_chunk(ctx, images[0]) == 0
    width = llm.n_embd()
    return np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(ctx), shape=(tokens * width,)).reshape(
        tokens, width).copy()
  finally:
    mtmd.mtmd_input_chunks_free(chunks)
    mtmd.mtmd_bitmap_free(bitmap)
    mtmd.mtmd_free(ctx)


def cls_last_features(model: LVLM, pixels: np.ndarray, layers: int) -> np.ndarray:
  """The features llama.cpp builds that put CLIP's class token after the patches (llama.cpp
  issue 25814): positions then shift by one and the class token replaces the first patch."""
  tower = model.vision_tower
  patches = tower.patch_embedding(jnp.asarray(pixels[None]))
  x = patches.reshape(1, -1, patches.shape[-1])
  cls = jnp.broadcast_to(tower.class_embedding[...], (1, 1, x.shape[-1]))
  x = tower.pre_layrnorm(jnp.concatenate([x, cls], axis=1) + tower.position_embedding[...])
  masking = attention.Masking("xla", causal=False)
  for layer in tower.layers[:layers]:
    x = layer(x, masking)
  return np.asarray(model.projector(x[:, 1:]))[0]


# llama.cpp's projector GELU is the tanh approximation (LLaVA's is exact): ~2e-4 at f32 here.
TOLERANCE = {"f32": 1e-3, "f16": 1e-3, "bf16": 5e-3, "q8_0": 1.5e-2}


def _image_and_pixels(seed=0):
  """A square image at the tower's size: llama.cpp's resize is then a copy, so both sides see
  the same pixels, normalized with the processor's mean / std."""
  rgb = np.random.RandomState(seed).randint(0, 256, (IMAGE, IMAGE, 3), np.uint8)
  pixels = (rgb.astype(np.float32) / 255 - np.float32(MEAN)) / np.float32(STD)
  return rgb, pixels


@pytest.mark.parametrize("tensor_type", list(TOLERANCE))
def test_llama_cpp_embeds_images_as_we_do_siglip(host, tmp_path, tensor_type):
  """SigLIP with the "full" strategy (llama.cpp's only token choice for it), two feature
  layers concatenated: llama.cpp's image embeddings equal our `image_features`."""
  model = convert.from_hf(llava_dir(tmp_path / "hf", "siglip", seed=1, vision_feature_layer=[-3, -1],
                                    vision_feature_select_strategy="full"))
  path = str(tmp_path / "mmproj.gguf")
  write_mmproj(model, path, tensor_type=tensor_type)
  rgb, pixels = _image_and_pixels()
  ours = np.asarray(model.image_features(jnp.asarray(pixels[None])))[0]
  got = llama_cpp_image_embeddings(path, host, rgb)
  assert got.shape == ours.shape == (model.config.num_image_tokens, TEXT_HIDDEN)
  np.testing.assert_allclose(got, ours, rtol=0, atol=TOLERANCE[tensor_type] * np.abs(ours).max())


def test_llama_cpp_embeds_images_as_we_do_clip(host, clip_model, tmp_path):
  """CLIP, LLaVA-1.5's tower and settings. llama.cpp builds without issue 25814's fix put the
  class token last; the file is then still checked exactly, against that arrangement."""
  path = str(tmp_path / "mmproj.gguf")
  write_mmproj(clip_model, path, tensor_type="f32")
  rgb, pixels = _image_and_pixels()
  ours = np.asarray(clip_model.image_features(jnp.asarray(pixels[None])))[0]
  got = llama_cpp_image_embeddings(path, host, rgb)
  assert got.shape == ours.shape == (16, TEXT_HIDDEN)
  atol = TOLERANCE["f32"] * np.abs(ours).max()
  cls_last = cls_last_features(clip_model, pixels, layers=2)  # computed always, so it cannot rot
  assert cls_last.shape == ours.shape
  if np.abs(got - ours).max() <= atol:
    return
  np.testing.assert_allclose(got, cls_last, rtol=0, atol=atol)
  pytest.xfail("this llama.cpp puts CLIP's class token after the patches (llama.cpp issue 25814); "
               "the mmproj file matches our model exactly under that arrangement")


# ---- decoder GGUF + mmproj through llama-cpp-python's LLaVA-1.5 chat handler ------------------


def _png_data_uri(rgb: np.ndarray) -> str:
  buffer = io.BytesIO()
  Image.fromarray(rgb).save(buffer, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_llama_cpp_chats_about_an_image(tmp_path):
  """`convert to-gguf --mmproj` output answers a question about a PNG in llama.cpp's LLaVA-1.5
  chat handler; the prompt it evaluates holds the image's tokens."""
  llama_cpp = pytest.importorskip("llama_cpp", reason=LLAMA_CPP_WHEEL)
  from llama_cpp.llama_chat_format import Llava15ChatHandler  # pylint: disable=import-outside-toplevel
  if importlib.util.find_spec("visregion_jax.convert.gguf_export") is None:
    pytest.skip("needs the decoder GGUF export (visregion_jax.convert.gguf_export, `convert to-gguf`)")
  from visregion_jax.convert.__main__ import main  # pylint: disable=import-outside-toplevel
  tokenizer = convert.load_tokenizer(resolve_model_path("smollm2-135m-instruct"))
  tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
  vision = transformers.CLIPVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                                         num_attention_heads=4, image_size=IMAGE, patch_size=PATCH)
  text = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=9, num_key_value_heads=3,
                                  tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
  cfg = transformers.LlavaConfig(vision_config=vision, text_config=text,
                                 image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
  src = tmp_path / "hf"
  random_llava_model(cfg).save_pretrained(src)
  tokenizer.save_pretrained(src)
  decoder, mmproj = str(tmp_path / "model.gguf"), str(tmp_path / "mmproj.gguf")
  assert main(["to-gguf", "--src", str(src), "--dst", decoder, "--type", "f16", "--mmproj", mmproj]) == 0
  llm = llama_cpp.Llama(model_path=decoder, chat_handler=Llava15ChatHandler(clip_model_path=mmproj, verbose=False),
                        n_ctx=512, n_threads=2, verbose=False)
  try:
    rgb = np.random.RandomState(3).randint(0, 256, (40, 30, 3), np.uint8)
    question = {"type": "text", "text": "What is in this image?"}
    chat = dict(max_tokens=6, temperature=0.0, logit_bias={llm.token_eos(): -100.0})
    answer = llm.create_chat_completion(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": _png_data_uri(rgb)}}, question]}], **chat)
    text_only = llm.create_chat_completion(messages=[{"role": "user", "content": [question]}], **chat)
  finally:
    llm.close()
  assert answer["choices"][0]["message"]["content"]
  assert answer["usage"]["completion_tokens"] == 6
  # The prompt is split at the image, so its text may take one token more than unsplit.
  extra = answer["usage"]["prompt_tokens"] - text_only["usage"]["prompt_tokens"]
  assert extra - (IMAGE // PATCH) ** 2 in (0, 1)

