"""Tiny, real inputs for training tests: a random Llama with SmolLM2's tokenizer, a
random CLIP tower, the synthetic image-QA set, and a config over them."""

import os
import shutil

import torch
import transformers

from visregion_jax.convert.gguf_file import SMOLLM2_ALIAS, resolve_model_path
from visregion_jax.convert.tokenizer import load_tokenizer
from visregion_jax.demo import synthetic

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def build_inputs(root: str, num_layers: int = 4) -> dict:
  """Writes the tiny models and data under `root` once; returns their paths."""
  paths = {"decoder": os.path.join(root, "decoder"), "tower": os.path.join(root, "tower"),
           "data": os.path.join(root, "data")}
  if os.path.exists(os.path.join(root, "ready")):
    return paths
  tok = load_tokenizer(resolve_model_path(SMOLLM2_ALIAS))
  torch.manual_seed(0)
  decoder = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
      bos_token_id=1, eos_token_id=2, pad_token_id=2))
  decoder.save_pretrained(paths["decoder"])
  tok.save_pretrained(paths["decoder"])
  tower = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
      hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
      image_size=28, patch_size=7))
  tower.save_pretrained(paths["tower"])
  synthetic.write_synthetic_dataset(paths["data"], num_train=64, num_eval=8, image_size=48,
                                    num_text_train=8, num_text_eval=8)
  open(os.path.join(root, "ready"), "w").close()
  return paths


def overrides(paths: dict, workdir: str, **extra) -> list:
  """`--config.KEY=VALUE` arguments for configs/tiny_test.py over these inputs."""
  values = {"workdir": workdir, "model.init_from": paths["decoder"], "model.vision_tower": paths["tower"],
            "data.train_json": os.path.join(paths["data"], "train.json"),
            "data.eval_json": os.path.join(paths["data"], "eval.json"),
            "data.text_eval_json": os.path.join(paths["data"], "text_eval.json"),
            "data.image_root": paths["data"], **extra}
  return ["--config", os.path.join(CONFIGS, "tiny_test.py")] + [f"--config.{k}={v}" for k, v in values.items()]


def copy_tree(src: str, dst: str) -> str:
  shutil.copytree(src, dst)
  return dst
