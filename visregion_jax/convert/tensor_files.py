"""Streaming access to HF weight files: safetensors (single or sharded) and legacy .bin.

Tensors are read one at a time, so converting an 8B/13B checkpoint never holds the
file contents and the model at once. Every failure names the file and the tensor.
"""

import json
import os
from typing import Iterable

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from visregion_jax.errors import VisRegionError

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024 ** 3


def read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    raise VisRegionError(path, "file not found") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise VisRegionError(path, f"expected valid UTF-8 JSON ({e})") from None
  except OSError as e:
    raise VisRegionError(path, f"expected a readable file ({e.strerror})") from None


def read_json_object(path: str) -> dict:
  d = read_json(path)
  if not isinstance(d, dict):
    raise VisRegionError(path, f"expected a JSON object, got {type(d).__name__}")
  return d


class SafetensorsSource:
  """Tensors of a directory's safetensors files, looked up through the index if sharded."""

  def __init__(self, directory: str, single: str = SAFETENSORS_SINGLE,
               index: str = SAFETENSORS_INDEX):
    self.name = directory
    index_path = os.path.join(directory, index)
    if os.path.exists(index_path):
      weight_map = read_json_object(index_path).get("weight_map")
      if not isinstance(weight_map, dict) or not weight_map:
        raise VisRegionError(f"{index_path}: weight_map", "expected a non-empty mapping of tensor -> file")
      self._file_of = {k: self._inside(directory, f, index_path) for k, f in weight_map.items()}
    else:
      path = os.path.join(directory, single)
      with self._open(path) as handle:
        self._file_of = {k: path for k in handle.keys()}

  @staticmethod
  def _inside(directory: str, filename: str, index_path: str) -> str:
    path = os.path.realpath(os.path.join(directory, str(filename)))
    if os.path.dirname(path) != os.path.realpath(directory):
      raise VisRegionError(f"{index_path}: {filename}", "expected a shard file inside the checkpoint directory")
    return path

  @staticmethod
  def _open(path: str):
    """A fresh handle per use: a long-lived one keeps every page read so far mapped, so
    the whole file would stay resident beside the model being filled."""
    try:
      return safe_open(path, framework="np")
    except FileNotFoundError:
      raise VisRegionError(path, "file not found") from None
    except (SafetensorError, OSError, ValueError) as e:
      raise VisRegionError(path, f"expected a readable safetensors file ({e})") from None

  def keys(self) -> set:
    return set(self._file_of)

  def where(self, key: str) -> str:
    return self._file_of[key]

  def _read(self, key: str, read):
    path = self._file_of[key]
    with self._open(path) as handle:
      if key not in handle.keys():
        raise VisRegionError(f"{path}: {key}", "tensor listed in the index but missing from the shard")
      try:
        return read(handle)
      except (SafetensorError, OSError, ValueError) as e:
        raise VisRegionError(f"{path}: {key}", f"expected a readable tensor ({e})") from None

  def shape(self, key: str) -> tuple:
    return tuple(self._read(key, lambda h: h.get_slice(key).get_shape()))

  def get(self, key: str) -> np.ndarray:
    return self._read(key, lambda h: h.get_tensor(key))


class TorchBinSource:
  """Legacy `pytorch_model.bin` checkpoints, read with `weights_only=True` (no pickle code)."""

  def __init__(self, directory: str, single: str = BIN_SINGLE, index: str = BIN_INDEX):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise VisRegionError(directory, "a pytorch_model.bin checkpoint needs torch installed "
                           "(or convert it to safetensors)") from None
    self._torch = torch
    self.name = directory
    index_path = os.path.join(directory, index)
    if os.path.exists(index_path):
      weight_map = read_json_object(index_path).get("weight_map")
      if not isinstance(weight_map, dict) or not weight_map:
        raise VisRegionError(f"{index_path}: weight_map", "expected a non-empty mapping of tensor -> file")
      files = sorted(set(weight_map.values()))
      paths = [SafetensorsSource._inside(directory, f, index_path) for f in files]
    else:
      paths = [os.path.join(directory, single)]
    self._tensors, self._file_of = {}, {}
    for path in paths:
      try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
      except FileNotFoundError:
        raise VisRegionError(path, "file not found") from None
      except Exception as e:  # torch raises many types for corrupt or unsafe files
        raise VisRegionError(path, f"expected a weights-only torch checkpoint ({type(e).__name__})") from None
      for k, v in state.items():
        self._tensors[k], self._file_of[k] = v, path

  def keys(self) -> set:
    return set(self._tensors)

  def where(self, key: str) -> str:
    return self._file_of[key]

  def shape(self, key: str) -> tuple:
    return tuple(self._tensors[key].shape)

  def get(self, key: str) -> np.ndarray:
    t = self._tensors[key]
    if t.dtype == self._torch.bfloat16:
      import ml_dtypes  # pylint: disable=import-outside-toplevel
      return t.view(self._torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def open_hf_weights(directory: str):
  """The weight source of an HF model directory: safetensors first, else legacy .bin."""
  for name in (SAFETENSORS_INDEX, SAFETENSORS_SINGLE):
    if os.path.exists(os.path.join(directory, name)):
      return SafetensorsSource(directory)
  for name in (BIN_INDEX, BIN_SINGLE):
    if os.path.exists(os.path.join(directory, name)):
      return TorchBinSource(directory)
  raise VisRegionError(directory, f"expected {SAFETENSORS_SINGLE}, {SAFETENSORS_INDEX} or {BIN_SINGLE}")


def write_safetensors(directory: str, tensors: Iterable, sizes: list,
                      max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list:
  """Writes (name, array) pairs as HF safetensors, sharded with an index above the limit.

  `sizes` (bytes per tensor, in order) lets the shard count be known before any
  tensor is produced, so tensors can be generated lazily and only one shard is ever
  held in memory. Returns the written file names.
  """
  shards, current, current_bytes = [], [], 0
  for i, size in enumerate(sizes):
    if current and current_bytes + size > max_shard_bytes:
      shards.append(current)
      current, current_bytes = [], 0
    current.append(i)
    current_bytes += size
  shards.append(current)
  names = ([SAFETENSORS_SINGLE] if len(shards) == 1 else
           [f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors" for n in range(len(shards))])
  weight_map = {}
  iterator = iter(tensors)
  for name, members in zip(names, shards):
    shard = {}
    for _ in members:
      key, array = next(iterator)
      shard[key] = np.ascontiguousarray(array)
      weight_map[key] = name
    try:
      save_file(shard, os.path.join(directory, name), metadata={"format": "pt"})
    except SafetensorError as e:  # safetensors reports a full disk or a size limit this way
      raise VisRegionError(os.path.join(directory, name), f"could not be written ({e})") from None
    del shard
  if len(names) > 1:
    with open(os.path.join(directory, SAFETENSORS_INDEX), "w", encoding="utf-8") as f:
      json.dump({"metadata": {"total_size": int(sum(sizes))}, "weight_map": weight_map}, f, indent=2)
  return names
