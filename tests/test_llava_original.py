"""Original LLaVA / Bunny checkpoints (+ PEFT LoRA adapters) import equal to transformers.

Each original-format directory is written here the way LLaVA's / Bunny's own code
saves one: config.json is the decoder's config plus mm_* keys, the weights are the
decoder's (`model.*`, `lm_head.weight`) plus `model.mm_projector.{0,2}`, and the vision
tower is a separate HF vision model directory. The reference is always transformers:
the llava-hf model the weights came from, or PEFT's own merge_and_unload.
"""

import copy
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers
from conftest import hf_logits, random_llava_model, tiny_llama_config
from consumer_check import check_transformers_path
from safetensors.numpy import load_file
from safetensors.torch import save_file
from test_convert_errors import assert_one_error_line
from test_convert_roundtrip import all_tensors, assert_bit_exact
from test_lvlm import IMAGE_TOKEN, batch_with_images, hf_llava_logits, llava_model, vision_config

from visregion_jax import convert
from visregion_jax.convert.__main__ import main
from visregion_jax.convert.params import model_params
from visregion_jax.errors import VisRegionError

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHI3_TARGETS = ["qkv_proj", "gate_up_proj", "o_proj", "down_proj"]


# --- writing the original format from a transformers llava model ---------------------------


def decoder_state(llava) -> dict:
  """The llava model's decoder under the original names (model.*, lm_head.weight)."""
  sd = llava.state_dict()
  out = {"model." + k[len("model.language_model."):]: v for k, v in sd.items()
         if k.startswith("model.language_model.")}
  out["lm_head.weight"] = sd["lm_head.weight"]
  return out


def projector_state(llava) -> dict:
  p = llava.model.multi_modal_projector
  return {"model.mm_projector.0.weight": p.linear_1.weight, "model.mm_projector.0.bias": p.linear_1.bias,
          "model.mm_projector.2.weight": p.linear_2.weight, "model.mm_projector.2.bias": p.linear_2.bias}


def original_config(llava, model_type: str) -> dict:
  d = {k: v for k, v in llava.config.text_config.to_dict().items() if v is not None}
  strategy = llava.config.vision_feature_select_strategy
  d.update(model_type=model_type, architectures=["LlavaLlamaForCausalLM"],
           mm_projector_type="mlp2x_gelu", mm_hidden_size=llava.config.vision_config.hidden_size,
           mm_vision_select_layer=llava.config.vision_feature_layer,
           mm_vision_select_feature="patch" if strategy == "default" else "cls_patch",
           mm_vision_tower="openai/clip-vit-large-patch14-336", mm_use_im_start_end=False,
           mm_patch_merge_type="flat", image_aspect_ratio="pad", tune_mm_mlp_adapter=False)
  return d


def save_tensors(tensors: dict, path) -> None:
  save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def write_original(llava, directory, model_type="llava_llama", tower_in_checkpoint=False) -> str:
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    json.dump(original_config(llava, model_type), f)
  tensors = {**decoder_state(llava), **projector_state(llava)}
  if tower_in_checkpoint:  # LLaVA's CLIPVisionTower wraps transformers 4's CLIPVisionModel
    tensors.update({"model.vision_tower.vision_tower.vision_model." + k: v
                    for k, v in llava.model.vision_tower.state_dict().items()})
  save_tensors(tensors, os.path.join(directory, "model.safetensors"))
  return str(directory)


def write_vision_tower(llava, directory) -> str:
  cfg = llava.config.vision_config
  cls = transformers.CLIPVisionModel if cfg.model_type == "clip_vision_model" else transformers.SiglipVisionModel
  tower = cls(cfg)
  tower.load_state_dict(llava.model.vision_tower.state_dict())
  tower.save_pretrained(directory)
  return str(directory)


def decoder_of(llava):
  cfg = llava.config.text_config
  cls = {"llama": transformers.LlamaForCausalLM, "phi3": transformers.Phi3ForCausalLM}[cfg.model_type]
  decoder = cls(cfg).eval()
  decoder.load_state_dict(decoder_state(llava))
  return decoder


def write_adapter(decoder, directory, seed=0, **lora):
  """A real PEFT adapter with non-zero B (PEFT starts B at zero: no delta); returns the
  merge_and_unload reference."""
  model = peft.get_peft_model(copy.deepcopy(decoder), peft.LoraConfig(**lora))
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "lora_B" in name:
        p.copy_(0.1 * torch.randn_like(p))
  model.save_pretrained(str(directory))
  return model.merge_and_unload().eval()


def tiny_tokenizer(vocab_size=128):
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=import-outside-toplevel
  vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
  backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  backend.pre_tokenizer = pre_tokenizers.Whitespace()
  return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                              bos_token="<s>", eos_token="</s>")


def text_batch(rng, rows=3, width=9):
  ids = rng.randint(3, 110, size=(rows, width))
  mask = np.ones_like(ids)
  mask[0, :3] = 0  # left padding
  return ids, mask


def ours_logits(model, ids, mask, pixels=None):
  pixels = None if pixels is None else jnp.asarray(pixels)
  return np.asarray(model(jnp.asarray(ids), pixels, jnp.asarray(mask)))


def assert_close(got, ref, mask):
  assert np.abs(got - ref)[mask.astype(bool)].max() <= 1e-4


def tiny_llava_llama(seed=0):
  """clip + a 4-layer Llama: layers_to_transform=[1, 3] leaves layers 0 and 2 untouched."""
  cfg = transformers.LlavaConfig(vision_config=vision_config("clip"), image_token_id=IMAGE_TOKEN,
                                 text_config=tiny_llama_config(num_key_value_heads=2, num_hidden_layers=4))
  return random_llava_model(cfg, seed)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
  """(llava-hf model, original dir, vision dir, imported LVLM)."""
  root = tmp_path_factory.mktemp("original_llama")
  hf = tiny_llava_llama()
  src, vision = write_original(hf, root / "llava"), write_vision_tower(hf, root / "clip")
  return hf, src, vision, convert.from_llava_original(src, vision_tower=vision, image_token_id=IMAGE_TOKEN)


@pytest.fixture(scope="module")
def bunny_phi3(tmp_path_factory):
  root = tmp_path_factory.mktemp("original_bunny")
  hf = llava_model("siglip", "phi3", seed=3, vision_feature_select_strategy="full")
  return hf, write_original(hf, root / "bunny", "bunny-phi3"), write_vision_tower(hf, root / "siglip")


# --- the original format ------------------------------------------------------------------


def test_llava_logits_match_transformers(llama):
  hf, _, _, ours = llama
  ids, mask, pixels = batch_with_images(hf, np.random.RandomState(0))
  assert_close(ours_logits(ours, ids, mask, pixels), hf_llava_logits(hf, ids, mask, pixels), mask)


def test_bunny_siglip_phi3_logits_match_transformers(bunny_phi3):
  """Bunny's SigLIP features: hidden state -2 of the full tower, every token."""
  hf, src, vision = bunny_phi3
  ours = convert.from_llava_original(src, vision_tower=vision, image_token_id=IMAGE_TOKEN)
  assert ours.config.feature_layers == (-2,) and ours.config.feature_strategy == "full"
  ids, mask, pixels = batch_with_images(hf, np.random.RandomState(1), (1, 2))
  assert_close(ours_logits(ours, ids, mask, pixels), hf_llava_logits(hf, ids, mask, pixels), mask)


def assert_same_params(a, b):
  want, got = model_params(a), model_params(b)
  assert sorted(want) == sorted(got)
  for path, value in want.items():
    np.testing.assert_array_equal(np.asarray(got[path]), np.asarray(value), err_msg=str(path))


def test_tower_saved_in_checkpoint_is_read_from_it(llama, tmp_path):
  """With the tower's weights in the checkpoint, the vision directory gives only its config."""
  hf, _, vision, ours = llama
  src = write_original(hf, tmp_path / "llava", tower_in_checkpoint=True)
  config_only = tmp_path / "clip_config"
  config_only.mkdir()
  (config_only / "config.json").write_text(open(os.path.join(vision, "config.json")).read())
  again = convert.from_llava_original(src, vision_tower=str(config_only), image_token_id=IMAGE_TOKEN)
  assert_same_params(ours, again)


def test_full_clip_model_directory_gives_the_tower(llama, tmp_path):
  """mm_vision_tower names a full CLIPModel on the Hub; its text tower is left out."""
  hf, src, _, ours = llama
  full = transformers.CLIPModel(transformers.CLIPConfig(
      vision_config=hf.config.vision_config.to_dict(),
      text_config=dict(hidden_size=32, intermediate_size=40, num_hidden_layers=1,
                       num_attention_heads=2, vocab_size=50)))
  full.vision_model.load_state_dict(hf.model.vision_tower.state_dict())
  full.save_pretrained(tmp_path / "clip_full")
  again = convert.from_llava_original(src, vision_tower=str(tmp_path / "clip_full"),
                                      image_token_id=IMAGE_TOKEN)
  assert_same_params(ours, again)


# --- LoRA adapters ------------------------------------------------------------------------


@pytest.mark.parametrize("lora", [
    dict(r=8, lora_alpha=16, target_modules=LLAMA_TARGETS, layers_to_transform=[1, 3]),
    dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=True),
], ids=["layers_1_3", "rslora"])
def test_llama_lora_merge_matches_peft(llama, tmp_path, lora):
  hf, src, vision, _ = llama
  merged = write_adapter(decoder_of(hf), tmp_path / "adapter", **lora)
  ours = convert.from_llava_original(src, vision_tower=vision, adapter=str(tmp_path / "adapter"),
                                     image_token_id=IMAGE_TOKEN)
  ids, mask = text_batch(np.random.RandomState(2))
  assert_close(ours_logits(ours, ids, mask), hf_logits(merged, ids, mask), mask)


def test_phi3_fused_lora_merge_matches_peft(bunny_phi3, tmp_path):
  hf, src, vision = bunny_phi3
  merged = write_adapter(decoder_of(hf), tmp_path / "adapter", seed=1, r=8, lora_alpha=32,
                         target_modules=PHI3_TARGETS)
  ours = convert.from_llava_original(src, vision_tower=vision, adapter=str(tmp_path / "adapter"),
                                     image_token_id=IMAGE_TOKEN)
  ids, mask = text_batch(np.random.RandomState(3))
  assert_close(ours_logits(ours, ids, mask), hf_logits(merged, ids, mask), mask)


def new_projector(llava, seed: int) -> dict:
  torch.manual_seed(seed)
  return {k: torch.randn_like(v) * 0.1 for k, v in projector_state(llava).items()}


def reference_llava(llava, merged, projector: dict):
  """The llava-hf model with the merged decoder and a replaced projector."""
  ref = copy.deepcopy(llava)
  sd = merged.state_dict()
  ref.model.language_model.load_state_dict({k[len("model."):]: v for k, v in sd.items()
                                            if k.startswith("model.")})
  ref.lm_head.load_state_dict({"weight": sd["lm_head.weight"]})
  p = ref.model.multi_modal_projector
  with torch.no_grad():
    for linear, index in ((p.linear_1, 0), (p.linear_2, 2)):
      linear.weight.copy_(projector[f"model.mm_projector.{index}.weight"])
      linear.bias.copy_(projector[f"model.mm_projector.{index}.bias"])
  return ref


def test_non_lora_trainables_override_the_projector(llama, tmp_path):
  hf, src, vision, _ = llama
  adapter = tmp_path / "adapter"
  merged = write_adapter(decoder_of(hf), adapter, seed=2, r=8, lora_alpha=16,
                         target_modules=LLAMA_TARGETS)
  projector = new_projector(hf, seed=5)
  torch.save({"base_model.model." + k: v for k, v in projector.items()},
             adapter / "non_lora_trainables.bin")
  ours = convert.from_llava_original(src, vision_tower=vision, adapter=str(adapter),
                                     image_token_id=IMAGE_TOKEN)
  np.testing.assert_array_equal(np.asarray(ours.projector.linears[1].kernel[...]),
                                projector["model.mm_projector.2.weight"].numpy().T)
  ref = reference_llava(hf, merged, projector)
  ids, mask, pixels = batch_with_images(hf, np.random.RandomState(4), (1, 0))
  assert_close(ours_logits(ours, ids, mask, pixels), hf_llava_logits(ref, ids, mask, pixels), mask)


# --- one CLI call: plain decoder + LLaVA LoRA directory -> llava-hf, <image> added ---------


def test_cli_lora_run_to_llava_hf_adds_image_token(llama, tmp_path, capsys):
  """LLaVA's LoRA release layout: the base is the plain decoder (with its tokenizer), the
  adapter directory holds config.json with the mm_* keys and the projector in
  non_lora_trainables; no image token id is given, so <image> becomes row 128."""
  hf, src, vision, _ = llama
  base, adapter = tmp_path / "vicuna", tmp_path / "adapter"
  decoder = decoder_of(hf)
  decoder.save_pretrained(base)
  tiny_tokenizer().save_pretrained(base)
  write_adapter(decoder, adapter, seed=3, r=8, lora_alpha=16, target_modules=LLAMA_TARGETS,
                layers_to_transform=[1, 3])
  (adapter / "config.json").write_text(open(os.path.join(src, "config.json")).read())
  save_tensors({"base_model.model." + k: v for k, v in new_projector(hf, seed=6).items()},
               adapter / "non_lora_trainables.safetensors")
  out = str(tmp_path / "llava_hf")
  rc = main(["to-hf", "--src", str(base), "--adapter", str(adapter), "--vision-tower", vision,
             "--dst", out])
  assert rc == 0, capsys.readouterr().err

  ours = convert.from_llava_original(str(base), vision_tower=vision, adapter=str(adapter))
  assert ours.config.image_token_id == 128 and ours.config.text.vocab_size == 129
  embed = all_tensors(out)["language_model.model.embed_tokens.weight"]
  np.testing.assert_allclose(embed[128], embed[:128].mean(axis=0), rtol=1e-6, atol=1e-7)
  tok = transformers.AutoTokenizer.from_pretrained(out)
  assert tok.convert_tokens_to_ids("<image>") == 128 and tok.added_tokens_decoder[128].special
  assert tok("w5 <image> w7", add_special_tokens=False)["input_ids"] == [5, 128, 7]

  loaded = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
  assert loaded.config.image_token_id == 128
  ids, mask, pixels = batch_with_images(hf, np.random.RandomState(5), (1, 2))
  ids[ids == IMAGE_TOKEN] = 128
  assert_close(hf_llava_logits(loaded, ids, mask, pixels), ours_logits(ours, ids, mask, pixels), mask)


@pytest.mark.parametrize("aspect", ["pad", "square"])
def test_converted_export_answers_through_transformers_processor(llama, tmp_path, aspect):
  """With its tokenizer beside it, an original checkpoint's export has LLaVA-1.5's
  processor: vicuna_v1 prompts, the tower's image processor, padding as
  image_aspect_ratio says."""
  hf, src, vision, _ = llama
  original = tmp_path / "llava"
  shutil.copytree(src, original)
  d = json.loads((original / "config.json").read_text())
  (original / "config.json").write_text(json.dumps({**d, "image_aspect_ratio": aspect}))
  tiny_tokenizer().save_pretrained(original)
  out = str(tmp_path / "llava_hf")
  assert main(["to-hf", "--src", str(original), "--vision-tower", vision, "--dst", out]) == 0
  processor = transformers.AutoProcessor.from_pretrained(out)
  assert processor.image_processor.do_pad == (aspect == "pad")
  prompt = processor.apply_chat_template(
      [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "w5 w6"}]}],
      add_generation_prompt=True, tokenize=False)
  assert prompt.endswith("USER: <image>\nw5 w6 ASSISTANT:") and prompt.startswith("A chat between")
  check_transformers_path(out)


def test_template_option_names_the_conversation_format(llama, tmp_path):
  hf, src, vision, _ = llama
  original = tmp_path / "llava"
  shutil.copytree(src, original)
  tiny_tokenizer().save_pretrained(original)
  out = str(tmp_path / "llava_hf")
  assert main(["to-hf", "--src", str(original), "--vision-tower", vision, "--template", "phi3", "--dst", out]) == 0
  prompt = transformers.AutoProcessor.from_pretrained(out).apply_chat_template(
      [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "w5"}]}],
      add_generation_prompt=True, tokenize=False)
  assert prompt == "<|user|>\n<image>\nw5<|end|>\n<|assistant|>\n"


def test_cli_from_hf_orbax_checkpoint_then_to_hf(llama, tmp_path, capsys):
  """from-hf takes the same options; the JAX checkpoint keeps the <image>-extended tokenizer."""
  _, src, vision, _ = llama
  with_tokenizer = copy_original(src, tmp_path)
  tiny_tokenizer().save_pretrained(with_tokenizer)
  ckpt, a, b = (str(tmp_path / n) for n in ("ckpt", "a", "b"))
  assert main(["from-hf", "--src", with_tokenizer, "--vision-tower", vision, "--dst", ckpt]) == 0
  assert main(["to-hf", "--src", ckpt, "--dst", a]) == 0
  assert main(["to-hf", "--src", with_tokenizer, "--vision-tower", vision, "--dst", b]) == 0, (
      capsys.readouterr().err)
  assert_bit_exact(all_tensors(a), all_tensors(b))
  assert transformers.AutoTokenizer.from_pretrained(a).convert_tokens_to_ids("<image>") == 128


def test_tokenizer_image_token_is_used_or_its_mismatch_named(llama, tmp_path):
  """A tokenizer that already has <image> inside the vocabulary gives its id (no new row);
  one shorter than the vocabulary cannot put <image> on the new row: the error says so."""
  _, src, vision, _ = llama
  has_image = copy_original(src, tmp_path)
  tok = tiny_tokenizer(127)
  tok.add_tokens(["<image>"], special_tokens=True)
  tok.save_pretrained(has_image)
  model = convert.from_llava_original(has_image, vision_tower=vision)
  assert model.config.image_token_id == 127 and model.config.text.vocab_size == 128
  short = copy_original(src, tmp_path / "short")
  tiny_tokenizer(100).save_pretrained(short)
  with pytest.raises(VisRegionError, match="--image-token-id") as e:
    convert.from_llava_original(short, vision_tower=vision)
  assert short in str(e.value) and "row 128, got 100" in str(e.value)


# --- bad input ----------------------------------------------------------------------------


def edit_adapter(directory, change) -> None:
  path = os.path.join(directory, "adapter_model.safetensors")
  tensors = load_file(path)
  change(tensors)
  from safetensors.numpy import save_file as save_numpy  # pylint: disable=import-outside-toplevel
  save_numpy(tensors, path)


Q3_A = "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"


def bad_adapter_layer(tensors):  # layer 9 of a 4-layer base
  for which in "AB":
    key = Q3_A.replace("lora_A", f"lora_{which}")
    tensors[key.replace("layers.3", "layers.9")] = tensors.pop(key)


def bad_adapter_shape(tensors):
  tensors[Q3_A] = np.zeros((8, 63), np.float32)


def bad_adapter_excluded_layer(tensors):  # layer 0 exists, but layers_to_transform is [1, 3]
  for which in "AB":
    key = Q3_A.replace("lora_A", f"lora_{which}")
    tensors[key.replace("layers.3", "layers.0")] = tensors.pop(key)


@pytest.fixture(scope="module")
def adapter_dir(llama, tmp_path_factory):
  directory = tmp_path_factory.mktemp("adapter")
  write_adapter(decoder_of(llama[0]), directory, r=8, lora_alpha=16, target_modules=LLAMA_TARGETS,
                layers_to_transform=[1, 3])
  return directory


def copy_adapter(adapter_dir, tmp_path, change):
  import shutil  # pylint: disable=import-outside-toplevel
  directory = shutil.copytree(adapter_dir, tmp_path / "adapter")
  edit_adapter(directory, change)
  return str(directory)


def copy_original(src, tmp_path, config_change=None, tensors_change=None):
  import shutil  # pylint: disable=import-outside-toplevel
  directory = shutil.copytree(src, tmp_path / "llava")
  if config_change:
    d = json.load(open(directory / "config.json"))
    config_change(d)
    json.dump(d, open(directory / "config.json", "w"))
  if tensors_change:
    tensors = load_file(directory / "model.safetensors")
    tensors_change(tensors)
    from safetensors.numpy import save_file as save_numpy  # pylint: disable=import-outside-toplevel
    save_numpy(tensors, str(directory / "model.safetensors"))
  return str(directory)


BAD = {
    # name: (build kwargs from (llama fixture, adapter_dir, tmp_path), strings the message names)
    "adapter_layer_missing_from_base": (
        lambda l, a, t: dict(adapter=copy_adapter(a, t, bad_adapter_layer)),
        ["adapter_model.safetensors", Q3_A.replace("layers.3", "layers.9"), "lacks"]),
    "adapter_factor_shape": (
        lambda l, a, t: dict(adapter=copy_adapter(a, t, bad_adapter_shape)),
        ["adapter_model.safetensors", Q3_A, "[8, 63]"]),
    "adapter_layer_not_transformed": (
        lambda l, a, t: dict(adapter=copy_adapter(a, t, bad_adapter_excluded_layer)),
        [Q3_A.replace("layers.3", "layers.0"), "layers_to_transform"]),
    "projector_missing": (
        lambda l, a, t: dict(src=copy_original(l[1], t, tensors_change=lambda x: x.pop(
            "model.mm_projector.2.weight"))),
        ["model.mm_projector.2.weight", "missing"]),
    "mm_hidden_size_mismatch": (
        lambda l, a, t: dict(src=copy_original(l[1], t, config_change=lambda d: d.update(
            mm_hidden_size=1024))),
        ["config.json", "mm_hidden_size", "48"]),
    "vision_tower_missing": (
        lambda l, a, t: dict(vision_tower=None),
        ["config.json", "mm_vision_tower", "openai/clip-vit-large-patch14-336"]),
    "not_an_original_config": (
        lambda l, a, t: dict(src=copy_original(l[1], t, config_change=lambda d: d.update(
            model_type="llava"))),
        ["config.json", "model_type", "llava_llama"]),
}


def bad_kwargs(name, llama, adapter_dir, tmp_path) -> dict:
  kwargs = dict(src=llama[1], vision_tower=llama[2], adapter=None)
  kwargs.update(BAD[name][0](llama, adapter_dir, tmp_path))
  return kwargs


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_names_the_culprit(name, llama, adapter_dir, tmp_path):
  kwargs = bad_kwargs(name, llama, adapter_dir, tmp_path)
  with pytest.raises(VisRegionError) as e:
    convert.from_llava_original(kwargs.pop("src"), image_token_id=IMAGE_TOKEN, **kwargs)
  for needle in BAD[name][1]:
    assert needle in str(e.value), (needle, str(e.value))
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["adapter_layer_missing_from_base", "vision_tower_missing",
                                  "mm_hidden_size_mismatch"])
def test_bad_input_cli_error_line(name, llama, adapter_dir, tmp_path, capsys):
  kwargs = bad_kwargs(name, llama, adapter_dir, tmp_path)
  argv = ["to-hf", "--src", kwargs["src"], "--dst", str(tmp_path / "out"), "--image-token-id",
          str(IMAGE_TOKEN)]
  for option in ("vision_tower", "adapter"):
    if kwargs[option] is not None:
      argv += ["--" + option.replace("_", "-"), kwargs[option]]
  rc = main(argv)
  assert_one_error_line(rc, capsys.readouterr().err, *BAD[name][1])
