"""Random-access sources of LLaVA-format samples: a JSON file + image root, or TFDS.

Both give the same record for the same index: `{"id": str, "conversations": list,
"images": [encoded image bytes]}`, so the pipeline after them is one code path and
the two give identical batches. Sample-level problems raise `SkipSample` (counted by
the pipeline); file-level problems raise `VisRegionError` (the run stops).
"""

import json
import os
import stat

import numpy as np

from visregion_jax.data import skip
from visregion_jax.errors import VisRegionError

TFDS_NAME = "llava_conversations"


def read_llava_json(path: str) -> list:
  """The sample list of a LLaVA JSON file; a malformed file names the line and column."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise VisRegionError(path, "file not found") from None
  except OSError as e:
    raise VisRegionError(path, f"expected a readable file ({e.strerror})") from None
  try:
    samples = json.loads(raw.decode("utf-8", errors="surrogateescape"))
  except json.JSONDecodeError as e:
    raise VisRegionError(f"{path}:{e.lineno}:{e.colno}", f"expected valid JSON ({e.msg})") from None
  if not isinstance(samples, list):
    raise VisRegionError(path, f"expected a JSON list of samples, got {type(samples).__name__}")
  return samples


def image_paths(sample, index: int) -> list:
  """The sample's relative image paths (the `image` key: absent, a string or a list)."""
  if not isinstance(sample, dict):
    raise skip.SkipSample(skip.WRONG_TYPES, f"sample {index} is not an object")
  images = sample.get("image")
  if images is None:
    return []
  images = images if isinstance(images, list) else [images]
  if not all(isinstance(p, str) and p for p in images):
    raise skip.SkipSample(skip.WRONG_TYPES, f"sample {index}: image must be a path or a list of paths")
  return images


def _check_text(conversations, index: int) -> list:
  """Turns must be objects with string fields; undecodable bytes are skipped, not guessed."""
  if not isinstance(conversations, list):
    raise skip.SkipSample(skip.WRONG_TYPES, f"sample {index}: conversations must be a list")
  for turn in conversations:
    if isinstance(turn, dict) and isinstance(turn.get("value"), str):
      try:
        turn["value"].encode("utf-8")
      except UnicodeEncodeError:
        raise skip.SkipSample(skip.BAD_TEXT, f"sample {index}: text is not valid UTF-8") from None
  return conversations


def resolve_inside(root: str, relative: str, what: str) -> str:
  """`relative` under the real path `root`, or `SkipSample(PATH_OUTSIDE_ROOT)` when it
  resolves outside it (`..`, an absolute path or a symlink out): data files name paths,
  and a file must not make us read anything the user did not hand us."""
  path = os.path.realpath(os.path.join(root, relative))
  if os.path.commonpath([path, root]) != root:
    raise skip.SkipSample(skip.PATH_OUTSIDE_ROOT, f"{what}: {relative}")
  return path


def read_regular_file(path: str, what: str) -> bytes:
  """The bytes of a regular file; a directory, FIFO or device is never opened (it could
  block) and a missing or unreadable file is a `SkipSample`, not a crash."""
  try:
    if not stat.S_ISREG(os.stat(path).st_mode):
      raise skip.SkipSample(skip.NOT_A_FILE, f"{what}: {path}")
    with open(path, "rb") as f:
      return f.read()
  except OSError:
    raise skip.SkipSample(skip.MISSING_IMAGE, f"{what}: {path}") from None


class JsonSource:
  """A LLaVA JSON list; image paths resolve inside `image_root` or the sample is skipped."""

  def __init__(self, json_path: str, image_root: str):
    self.json_path = json_path
    self.image_root = os.path.realpath(image_root)
    if not os.path.isdir(self.image_root):
      raise VisRegionError(image_root, "expected the image root directory")
    self.samples = read_llava_json(json_path)

  def __len__(self) -> int:
    return len(self.samples)

  def __getitem__(self, index: int) -> dict:
    sample = self.samples[index]
    paths = [resolve_inside(self.image_root, p, f"sample {index}") for p in image_paths(sample, index)]
    images = [read_regular_file(path, f"sample {index}") for path in paths]
    return {"id": str(sample.get("id", index)),
            "conversations": _check_text(sample.get("conversations"), index), "images": images}


def write_tfds(json_path: str, image_root: str, data_dir: str, split: str = "train") -> str:
  """Writes a LLaVA JSON file + images as TFDS array_record shards (no TensorFlow needed).

  Records keep the JSON order and carry encoded image bytes; a sample whose images
  cannot be read is written without them plus its skip reason, so the TFDS source
  skips exactly what the JSON source skips.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  source = JsonSource(json_path, image_root)

  def records():
    for i, sample in enumerate(source.samples):
      try:
        images, problem = source[i]["images"], ""
      except skip.SkipSample as e:
        images, problem = [], e.reason
      text = json.dumps(sample, ensure_ascii=False).encode("utf-8", "surrogateescape")
      yield i, {"index": i, "skip_reason": problem, "sample_json": text, "images": images}

  class LlavaConversations(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, disable_shuffling=True,
          features=tfds.features.FeaturesDict({
              "index": tfds.features.Scalar(dtype=np.int64),
              "skip_reason": tfds.features.Text(),
              "sample_json": tfds.features.Tensor(shape=(), dtype=np.object_),
              "images": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
          }))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples()}

    def _generate_examples(self):
      yield from records()

  LlavaConversations.name = TFDS_NAME
  builder = LlavaConversations(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return data_dir


class TfdsSource:
  """The array_record shards `write_tfds` made, read with `tfds.data_source`."""

  def __init__(self, data_dir: str, split: str = "train"):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    try:
      self._source = tfds.data_source(TFDS_NAME, data_dir=data_dir, split=split)
    except Exception as e:  # tfds raises several types for a missing or foreign directory
      raise VisRegionError(data_dir, f"expected {TFDS_NAME} array_record data for split "
                           f"{split!r} ({type(e).__name__})") from None

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    record = self._source[index]
    reason = record["skip_reason"]
    reason = reason.decode() if isinstance(reason, bytes) else reason
    if reason:
      raise skip.SkipSample(reason, f"sample {index}")
    sample = json.loads(record["sample_json"].decode("utf-8", "surrogateescape"))
    return {"id": str(sample.get("id", index)),
            "conversations": _check_text(sample.get("conversations"), index),
            "images": list(record["images"])}
