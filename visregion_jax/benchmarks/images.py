"""A benchmark sample's images, decoded only when the sample is used.

A reader knows where each image is (bytes in a parquet cell, a file under the image
folder, a base64 cell, a row of another parquet table) and decodes none of them: that
waits for `Images.load()`, when the runner reaches the sample, so opening or skipping
through a benchmark costs no decoding. An image that cannot be had (missing, outside the
image folder, not a regular file, undecodable) does not drop its sample: `load()`
returns a failure with one of data.skip's reasons, which the caller counts and scores as
a wrong answer, so a benchmark keeps its full size and its numbers stay comparable with
the references'.

Images come back as decoded, in their own mode: the model's image processor turns them
into RGB (transparency onto white, as transformers does; data/image_processing.py).
"""

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from PIL import Image

from visregion_jax.data import skip
from visregion_jax.data.sources import read_regular_file, resolve_inside

Fetch = Callable[[], bytes]  # one image's encoded bytes; raises skip.SkipSample when there are none


@dataclass(frozen=True)
class ImageLoad:
  """The outcome of `Images.load()`: all the sample's images, or why there are none."""
  images: tuple  # PIL images in the sample's order; empty when `reason` is set
  reason: Optional[str] = None  # a data.skip reason (missing_image, corrupt_image, path_outside_root, ...)
  detail: str = ""

  @property
  def ok(self) -> bool:
    return self.reason is None


class Images:
  """A sample's images: counted now (prompts need the number), decoded on `load()`."""

  def __init__(self, fetches: Sequence[Fetch], what: str):
    self._fetches = tuple(fetches)
    self.what = what  # names the sample in failure details, e.g. "pope sample 17"

  def __len__(self) -> int:
    return len(self._fetches)

  def load(self) -> ImageLoad:
    images = []
    for fetch in self._fetches:
      try:
        data = fetch()
      except skip.SkipSample as e:
        return ImageLoad((), e.reason, e.detail)
      try:
        with Image.open(io.BytesIO(data)) as image:
          image.load()
          images.append(image.copy())
      except Exception as e:  # PIL reports broken files as OSError, SyntaxError, struct.error, EOFError, ...
        return ImageLoad((), skip.CORRUPT_IMAGE, f"{self.what}: {type(e).__name__}: {e}")
    return ImageLoad(tuple(images))


def missing(what: str, why: str) -> Fetch:
  def fetch() -> bytes:
    raise skip.SkipSample(skip.MISSING_IMAGE, f"{what}: {why}")
  return fetch


def from_struct(cell, what: str) -> Fetch:
  """An image cell of a Hugging Face parquet file: the `datasets` Image feature's
  `{bytes, path}` struct. Only embedded bytes are read; a path alone names a file on the
  machine that wrote the dataset."""
  data = cell.get("bytes") if isinstance(cell, dict) else None
  if data is None:
    return missing(what, "the image cell holds no bytes")
  return lambda: data


def from_base64(text: Optional[str], what: str) -> Fetch:
  """A base64 image cell (MMBench's tsv), decoded when fetched."""
  if not text:
    return missing(what, "the image cell is empty")

  def fetch() -> bytes:
    try:
      return base64.b64decode(text)
    except binascii.Error as e:
      raise skip.SkipSample(skip.CORRUPT_IMAGE, f"{what}: not base64 ({e})") from None
  return fetch


def from_file(root: str, relative: str, what: str) -> Fetch:
  """A file under the real path `root`, named by a question file; a path that leaves the
  root is a failure and nothing outside it is read (data/sources.py's rule)."""
  return lambda: read_regular_file(resolve_inside(root, relative, what), what)
