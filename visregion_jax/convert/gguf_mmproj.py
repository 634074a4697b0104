"""An LVLM's vision tower and projector as the "mmproj" GGUF llama.cpp runs beside the decoder.

llama.cpp splits a LLaVA-style model in two files: the decoder GGUF and a second one that its
multimodal library (tools/mtmd: architecture `clip`, projector type `mlp`) turns images into
decoder embeddings with. This writes the second, as the llama.cpp that llama-cpp-python 0.3.36
vendors reads it, and refuses what that loader would run differently from our model:

- the projector must be mlp2x_gelu with biases (`mm.0`, GELU, `mm.2`). llama.cpp applies the
  tanh approximation of GELU where LLaVA uses the exact one, so its image embeddings differ
  slightly from ours (4e-4 of their largest value in the tests);
- llama.cpp hands the decoder exactly the tower's patch tokens: CLIP with the "default"
  strategy (the class token dropped) or SigLIP with "full" (it has none). HF's "default" on
  SigLIP drops a real patch, and "full" on CLIP keeps the class token; neither can be said;
- feature layers go in `clip.vision.feature_layer` as non-negative hidden-state indices (0 =
  the encoder input). llama.cpp runs the blocks up to the deepest one and concatenates the
  selected states in ascending order, so a list must be increasing. Writing the key, rather
  than leaving llama.cpp its LLaVA default of "all blocks but the last", also keeps the file
  right for builds whose default drops one block too many (llama.cpp issue 25817). Blocks past
  the deepest and the final LayerNorm never run, so they are not written;
- the tower's intermediate size must differ from its hidden size: the loader swaps `ffn_up`
  and `ffn_down` of `mlp` files whose down projection looks square (a fix for its legacy
  converter), which would scramble a square MLP.

What no file can fix: llama.cpp builds without the fix for its issue 25814, the 0.3.36 one
among them, put CLIP's class token after the patches, so each patch gets its neighbour's
position embedding and the class token's output replaces the first patch's. SigLIP towers
have no class token and are unaffected.

Image mean and std come from the model's image processor. llama.cpp preprocesses by itself
(its own padding and resizing, then normalizing with the mean and std written here) and
cannot be told to resize-and-crop as HF's CLIP processor does; an image already square at
the tower's size reaches both unchanged.

Tensors are streamed: every tensor's info goes into the header first, then each is converted
from its parameter, quantized, written and dropped, so the peak is one tensor beyond the model.
Types follow llama.cpp's converter: 1-D tensors in f32, the patch convolution in f16 for f16
files and f32 otherwise, q8_0 only for rows that are whole 32-value blocks (f16 for the rest).
The position embedding, a table looked up rather than multiplied, also stays f32.
"""

import gguf
import jax
import numpy as np

from visregion_jax import publish
from visregion_jax.convert.gguf_mmproj_names import (
  GGUF_PROJECTOR_NAMES,
  GGUF_TOWER_NAMES,
  TOWER_LEFT_OUT,
  expand_names,
)
from visregion_jax.convert.llava import LLAVA_PROJECTOR
from visregion_jax.convert.mapping import Table
from visregion_jax.convert.params import check_all_exported, model_params
from visregion_jax.convert.vision_tables import VISION_TABLES
from visregion_jax.data.from_config import image_processor_config
from visregion_jax.errors import VisRegionError
from visregion_jax.models.lvlm import LVLM
from visregion_jax.models.projector import projector_depth

QT = gguf.GGMLQuantizationType
TENSOR_TYPES = {"f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16, "q8_0": QT.Q8_0}
PROJECTOR_TYPE = "mlp"
POSITIONS = "v.position_embd.weight"
PATCH_KERNEL = "v.patch_embd.weight"
FEATURE_LAYER_KEY = "clip.vision.feature_layer"  # llama.cpp reads it; gguf-py 0.19 has no name for it


def feature_layer_indices(model: LVLM) -> list:
  """The config's feature layers as llama.cpp's non-negative hidden-state indices,
  after checking that llama.cpp can run this tower and projector as our model does."""
  config, vision = model.config, model.config.vision
  if projector_depth(config.projector_type) != 2 or not config.projector_bias:
    raise VisRegionError("projector_type", "llama.cpp's mlp projector is mlp2x_gelu with biases, "
                         f"got {config.projector_type!r} (bias={config.projector_bias})")
  tokens_kept = "default" if vision.has_class_token else "full"
  if config.feature_strategy != tokens_kept:
    raise VisRegionError("feature_strategy", f"llama.cpp feeds the decoder only the patch tokens of a "
                         f"{vision.kind} tower, which is {tokens_kept!r}; got {config.feature_strategy!r}")
  if vision.intermediate_size == vision.hidden_size:
    raise VisRegionError("vision.intermediate_size", "llama.cpp cannot tell ffn_up from ffn_down when "
                         f"it equals hidden_size ({vision.hidden_size})")
  total = len(model.vision_tower.layers) + 1
  if any(not -total <= int(i) < total for i in config.feature_layers):
    raise VisRegionError("feature_layers", f"expected indices in [{-total}, {total}) of the {total} "
                         f"hidden states, got {list(config.feature_layers)}")
  indices = [int(i) % total for i in config.feature_layers]
  if not indices or any(a >= b for a, b in zip(indices, indices[1:])):
    raise VisRegionError("feature_layers", "llama.cpp concatenates the selected hidden states in "
                         f"ascending order, each once; got {list(config.feature_layers)} = {indices}")
  return indices


def tensor_plan(model: LVLM, num_blocks: int) -> list:
  """(GGUF name, shape, produce) per tensor; `produce()` returns it as float32 HF layout."""
  plan = []
  tower = model.vision_tower
  for sub, table, config, all_layers, layers, names in (
      (tower, VISION_TABLES[model.config.vision.kind], model.config.vision, len(tower.layers),
       num_blocks, GGUF_TOWER_NAMES),
      (model.projector, LLAVA_PROJECTOR, model.config, 0, 0, GGUF_PROJECTOR_NAMES)):
    params = model_params(sub)
    check_all_exported(params, _used(table, config, all_layers))
    gguf_names = expand_names(names, layers)
    for hf, ours, transform in table.expand(config, layers):
      if hf.startswith(TOWER_LEFT_OUT):
        continue
      arrays = [params[p] for p in ours]
      shape = transform.hf_shape([a.shape for a in arrays], config)

      def produce(arrays=arrays, transform=transform, config=config):
        host = tuple(np.asarray(jax.device_get(a), np.float32) for a in arrays)
        return np.ascontiguousarray(transform.to_hf(host, config), np.float32)

      plan.append((gguf_names[hf], tuple(int(n) for n in shape), produce))
  return plan


def _used(table: Table, config, num_layers: int) -> set:
  """Our paths the full table covers: any other parameter (a LoRA factor) has no GGUF name."""
  return {p for _, ours, _ in table.expand(config, num_layers) for p in ours}


def ggml_type(name: str, shape: tuple, tensor_type: str):
  """The type one tensor is stored in for a `tensor_type` file (see the module docstring)."""
  if len(shape) == 1 or name == POSITIONS:
    return QT.F32
  if name == PATCH_KERNEL:
    return QT.F16 if tensor_type == "f16" else QT.F32
  if tensor_type == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[QT.Q8_0][0]:
    return QT.F16
  return TENSOR_TYPES[tensor_type]


def _add_metadata(writer, model: LVLM, layers: list) -> None:
  vision = model.config.vision
  processor = image_processor_config(model.config.vision, model.config.source)
  writer.add_clip_has_vision_encoder(True)
  writer.add_clip_projector_type(PROJECTOR_TYPE)
  writer.add_vision_image_size(vision.image_size)
  writer.add_vision_patch_size(vision.patch_size)
  writer.add_vision_embedding_length(vision.hidden_size)
  writer.add_vision_feed_forward_length(vision.intermediate_size)
  writer.add_vision_projection_dim(model.config.text.hidden_size)
  writer.add_vision_block_count(max(layers))
  writer.add_vision_head_count(vision.num_heads)
  writer.add_vision_attention_layernorm_eps(vision.layer_norm_eps)
  writer.add_vision_image_mean(list(processor.image_mean))
  writer.add_vision_image_std(list(processor.image_std))
  # False: llama.cpp's default tower activation, CLIP's quick_gelu; True: GELU, which llama.cpp
  # computes as the tanh approximation (SigLIP's gelu_pytorch_tanh; close to an exact "gelu").
  writer.add_vision_use_gelu(vision.hidden_act != "quick_gelu")
  writer.add_array(FEATURE_LAYER_KEY, layers)


def write_mmproj(model, path: str, *, tensor_type: str) -> None:
  """Writes `model`'s vision tower and projector to `path` (f32, f16, bf16 or q8_0 weights).

  The file appears whole or not at all: it is written beside `path` and renamed over it.
  """
  if not isinstance(model, LVLM):
    raise VisRegionError("model", f"expected an LVLM (vision tower + projector), got {type(model).__name__}")
  if tensor_type not in TENSOR_TYPES:
    raise VisRegionError("tensor_type", f"expected one of {list(TENSOR_TYPES)}, got {tensor_type!r}")
  layers = feature_layer_indices(model)
  plan = tensor_plan(model, max(layers))
  types = [ggml_type(name, shape, tensor_type) for name, shape, _ in plan]
  with publish.published_file(path) as partial:
    writer = gguf.GGUFWriter(partial, "clip")
    try:
      _add_metadata(writer, model, layers)
      for (name, shape, _), qtype in zip(plan, types):
        nbytes = int(np.prod(gguf.quant_shape_to_byte_shape(shape, qtype)))
        writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
      writer.write_header_to_file()
      writer.write_kv_data_to_file()
      writer.write_ti_data_to_file()
      for (_, _, produce), qtype in zip(plan, types):
        writer.write_tensor_data(gguf.quants.quantize(produce(), qtype))
    finally:
      writer.close()
