"""The LVLM equals transformers' LlavaForConditionalGeneration, and llava-hf round-trips."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import random_llava_model, tiny_llama_config, tiny_phi3_config
from test_convert_roundtrip import all_tensors, assert_bit_exact

from visregion_jax import convert, generate
from visregion_jax.errors import VisRegionError
from visregion_jax.models.lvlm import LVLM

IMAGE_TOKEN = 120
PATCH, IMAGE = 7, 28  # 16 patches per image


def vision_config(kind):
  common = dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
                image_size=IMAGE, patch_size=PATCH)
  if kind == "clip":
    return transformers.CLIPVisionConfig(**common)
  return transformers.SiglipVisionConfig(**common)


def llava_model(vision: str, text: str, seed=0, **overrides):
  text_cfg = tiny_llama_config(num_key_value_heads=2) if text == "llama" else tiny_phi3_config()
  cfg = transformers.LlavaConfig(vision_config=vision_config(vision), text_config=text_cfg,
                                 image_token_id=IMAGE_TOKEN, **overrides)
  return random_llava_model(cfg, seed)


def features_per_image(model):
  """Patches, plus CLIP's class token, less the first token under "default" (HF drops it
  for SigLIP too, which has no class token)."""
  patches = (IMAGE // PATCH) ** 2
  cls_token = model.config.vision_config.model_type == "clip_vision_model"
  return patches + int(cls_token) - int(model.config.vision_feature_select_strategy == "default")


def batch_with_images(model, rng, images_per_sample=(0, 1, 2)):
  """Left-padded prompts with image-token runs; returns ids, mask, NHWC pixels."""
  per = features_per_image(model)
  rows = []
  for n in images_per_sample:
    parts = [rng.randint(3, 110, size=rng.randint(2, 6))]
    for _ in range(n):
      parts += [np.full(per, IMAGE_TOKEN), rng.randint(3, 110, size=3)]
    rows.append(np.concatenate(parts))
  width = max(len(r) for r in rows)
  ids = np.zeros((len(rows), width), np.int64)
  mask = np.zeros_like(ids)
  for i, r in enumerate(rows):
    ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
  pixels = rng.randn(sum(images_per_sample), IMAGE, IMAGE, 3).astype(np.float32)
  return ids, mask, pixels


def hf_llava_logits(model, ids, mask, pixels):
  positions = np.maximum(mask.cumsum(1) - 1, 0)
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(positions),
                 pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2))).logits.numpy()


PAIRS = [("clip", "llama"), ("siglip", "llama"), ("siglip", "phi3")]


@pytest.fixture(scope="module", params=PAIRS, ids=["-".join(p) for p in PAIRS])
def pair(request, tmp_path_factory):
  hf = llava_model(*request.param)
  path = str(tmp_path_factory.mktemp("llava"))
  hf.save_pretrained(path)
  return hf, convert.from_hf(path), path


def test_logits_match_transformers(pair):
  hf, ours, _ = pair
  assert isinstance(ours, LVLM)
  ids, mask, pixels = batch_with_images(hf, np.random.RandomState(0))
  ref = hf_llava_logits(hf, ids, mask, pixels)
  got = np.asarray(ours(jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask)))
  assert np.abs(got - ref)[mask.astype(bool)].max() <= 1e-4


def test_greedy_generation_matches_transformers(pair):
  hf, ours, _ = pair
  ids, mask, pixels = batch_with_images(hf, np.random.RandomState(1), (1, 2))
  got = generate.generate(ours, ids, mask, max_new_tokens=10, eos_token_ids=[], pixel_values=pixels)
  with torch.no_grad():
    ref = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                      pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2)), do_sample=False,
                      max_new_tokens=10, min_new_tokens=10, pad_token_id=0).numpy()[:, ids.shape[1]:]
  np.testing.assert_array_equal(got, ref)


def test_round_trip_bit_exact_and_loadable(pair, tmp_path):
  hf, ours, path = pair
  out = convert.to_hf(ours, str(tmp_path / "out"))
  assert_bit_exact(all_tensors(path), all_tensors(out))
  loaded = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
  ids, mask, pixels = batch_with_images(hf, np.random.RandomState(2), (1,))
  np.testing.assert_array_equal(hf_llava_logits(loaded, ids, mask, pixels),
                                hf_llava_logits(hf, ids, mask, pixels))


def test_bf16_round_trip_and_module_layout(tmp_path):
  """bf16 stays bf16; the in-memory key layout (model.language_model.*) is read too."""
  hf = llava_model("clip", "llama", seed=4).to(torch.bfloat16)
  hf.save_pretrained(tmp_path / "src")
  state = {k: v.contiguous() for k, v in hf.state_dict().items()}
  from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
  (tmp_path / "module_layout").mkdir()
  save_file(state, str(tmp_path / "module_layout" / "model.safetensors"), metadata={"format": "pt"})
  hf.config.save_pretrained(tmp_path / "module_layout")
  a = convert.to_hf(convert.from_hf(str(tmp_path / "src")), str(tmp_path / "a"))
  b = convert.to_hf(convert.from_hf(str(tmp_path / "module_layout")), str(tmp_path / "b"))
  assert_bit_exact(all_tensors(str(tmp_path / "src")), all_tensors(a))
  assert_bit_exact(all_tensors(a), all_tensors(b))


def test_image_token_count_must_match_features(pair):
  hf, ours, _ = pair
  ids, mask, pixels = batch_with_images(hf, np.random.RandomState(3), (1, 1))
  with pytest.raises(VisRegionError, match="image tokens"):
    ours(jnp.asarray(ids), jnp.asarray(pixels[:1]), jnp.asarray(mask))


def test_feature_layer_list_and_full_strategy(tmp_path):
  hf = llava_model("clip", "llama", seed=5, vision_feature_layer=[-3, -1],
                   vision_feature_select_strategy="full")
  hf.save_pretrained(tmp_path)
  ours = convert.from_hf(str(tmp_path))
  ids, mask, pixels = batch_with_images(hf, np.random.RandomState(6), (2, 0))
  got = np.asarray(ours(jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask)))
  ref = hf_llava_logits(hf, ids, mask, pixels)
  assert np.abs(got - ref)[mask.astype(bool)].max() <= 1e-4


@pytest.mark.parametrize("change, key", [
    ({"image_token_index": 10_000}, "image_token_index"),
    ({"vision_feature_layer": 7}, "vision_feature_layer"),
    ({"projector_hidden_act": "relu"}, "projector_hidden_act"),
    ({"vision_feature_select_strategy": "cls"}, "vision_feature_select_strategy"),
])
def test_bad_llava_config(pair, tmp_path, change, key):
  _, _, path = pair
  import shutil  # pylint: disable=import-outside-toplevel
  bad = tmp_path / "bad"
  shutil.copytree(path, bad)
  d = json.load(open(bad / "config.json"))
  d.update(change)
  json.dump(d, open(bad / "config.json", "w"))
  with pytest.raises(VisRegionError, match=key):
    convert.from_hf(str(bad))


def test_text_hidden_mismatch_names_projector_key(tmp_path):
  """A projector built for another text width: the shape error names the tensor."""
  hf = llava_model("clip", "llama", seed=7)
  hf.save_pretrained(tmp_path)
  d = json.load(open(tmp_path / "config.json"))
  d["vision_config"]["hidden_size"] = 64
  json.dump(d, open(tmp_path / "config.json", "w"))
  with pytest.raises(VisRegionError, match="expected shape"):
    convert.from_hf(str(tmp_path))


def test_orbax_checkpoint_round_trip_via_cli(pair, tmp_path):
  """from-hf of a llava dir to a JAX checkpoint, to-hf back: bit-exact."""
  from visregion_jax.convert.__main__ import main  # pylint: disable=import-outside-toplevel
  _, _, path = pair
  assert main(["from-hf", "--src", path, "--dst", str(tmp_path / "ckpt")]) == 0
  assert main(["to-hf", "--src", str(tmp_path / "ckpt"), "--dst", str(tmp_path / "hf")]) == 0
  assert_bit_exact(all_tensors(path), all_tensors(str(tmp_path / "hf")))


def tiny_processor(vocab_size=110):
  """An offline LlavaProcessor: a word-level tokenizer plus CLIP's PIL image processor."""
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=import-outside-toplevel
  vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
  backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  backend.pre_tokenizer = pre_tokenizers.Whitespace()
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                             bos_token="<s>", eos_token="</s>")
  tok.add_tokens(["<image>"], special_tokens=True)
  image_processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": IMAGE},
                                                       crop_size={"height": IMAGE, "width": IMAGE})
  return transformers.LlavaProcessor(image_processor=image_processor, tokenizer=tok,
                                     patch_size=PATCH, vision_feature_select_strategy="default",
                                     image_token="<image>", num_additional_image_tokens=1)


def test_export_carries_tokenizer_and_processor(tmp_path):
  hf = llava_model("clip", "llama", seed=8)
  processor = tiny_processor()
  assert processor.tokenizer.convert_tokens_to_ids("<image>") == 110  # after w3..w109
  hf.config.image_token_id = processor.tokenizer.convert_tokens_to_ids("<image>")
  hf.save_pretrained(tmp_path / "src")
  processor.save_pretrained(tmp_path / "src")
  out = convert.to_hf(convert.from_hf(str(tmp_path / "src")), str(tmp_path / "out"))
  loaded = transformers.AutoProcessor.from_pretrained(out)
  image = np.random.RandomState(0).randint(0, 255, (40, 31, 3), np.uint8)
  a = processor(text="w5 <image> w7", images=image, return_tensors="np")
  b = loaded(text="w5 <image> w7", images=image, return_tensors="np")
  np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
  np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"])
  assert (b["input_ids"] == 110).sum() == features_per_image(hf)
