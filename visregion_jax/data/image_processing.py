"""Image preprocessing as LLaVA-1.5 and Bunny feed their CLIP / SigLIP vision towers.

The pixel values equal transformers' PIL image processors (`CLIPImageProcessorPil`,
`SiglipImageProcessorPil`; since transformers 5 the plain class names are the
torchvision "fast" processors, which resize with torch, not PIL) because every step repeats
their arithmetic: RGB conversion as `transformers.image_transforms.convert_to_rgb`,
a PIL resize of the uint8 image, a center crop by slicing, then rescaling in float64,
a cast to float32 and normalization in float32.
"""

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Literal, Union

import numpy as np
from PIL import Image

from visregion_jax.errors import VisRegionError

ImageLike = Union[Image.Image, np.ndarray]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

_RESAMPLE_FILTERS = frozenset(int(f) for f in Image.Resampling)
_HF_NAMES = {"clip": "CLIPImageProcessor", "siglip": "SiglipImageProcessor"}
_HF_KINDS = {"CLIPImageProcessor": "clip", "CLIPFeatureExtractor": "clip",
             "SiglipImageProcessor": "siglip"}
# llava-hf's processor: CLIP's steps plus LLaVA's pad-to-square (`do_pad`); with a
# {"height", "width"} size and no crop it runs SigLIP's steps.
_LLAVA = "LlavaImageProcessor"
# transformers' class defaults, which it also applies to keys that are absent or null.
_HF_DEFAULTS = {
    "clip": {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224},
             "do_center_crop": True, "image_mean": CLIP_MEAN, "image_std": CLIP_STD},
    "siglip": {"size": {"height": 224, "width": 224}, "do_center_crop": False,
               "image_mean": SIGLIP_MEAN, "image_std": SIGLIP_STD},
}
_HF_ALWAYS_ON = ("do_convert_rgb", "do_resize", "do_rescale", "do_normalize")


def _is_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
  """How one vision tower wants its pixels.

  kind "clip" resizes the shortest edge to `size` and center-crops a `crop_size`
  square; kind "siglip" resizes straight to a `size` square (`crop_size` None).
  `where` only names the source (a file, say) in error messages.
  """

  kind: Literal["clip", "siglip"]
  size: int
  crop_size: int | None
  image_mean: tuple[float, float, float]
  image_std: tuple[float, float, float]
  rescale_factor: float = 1 / 255
  resample: int = int(Image.Resampling.BICUBIC)
  where: dataclasses.InitVar[str] = "ImageProcessorConfig"

  def __post_init__(self, where: str):
    if self.kind not in _HF_NAMES:
      raise VisRegionError(f"{where}: kind", f"expected 'clip' or 'siglip', got {self.kind!r}")
    if not (_is_int(self.size) and self.size > 0):
      raise VisRegionError(f"{where}: size", f"expected a positive integer, got {self.size!r}")
    if self.kind == "siglip" and self.crop_size is not None:
      raise VisRegionError(f"{where}: crop_size", "expected none: SigLIP does not center-crop")
    if self.kind == "clip" and not (_is_int(self.crop_size) and 0 < self.crop_size <= self.size):
      raise VisRegionError(f"{where}: crop_size",
                           f"expected an integer in [1, size={self.size}], got {self.crop_size!r}")
    for name in ("image_mean", "image_std"):
      value = getattr(self, name)
      if (isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3
          or not all(_is_real(x) for x in value)):
        raise VisRegionError(f"{where}: {name}", f"expected 3 numbers (R, G, B), got {value!r}")
      # Tuples keep the config hashable and equal however the numbers arrived.
      object.__setattr__(self, name, tuple(float(x) for x in value))
    if not all(0 <= x <= 1 for x in self.image_mean):
      raise VisRegionError(f"{where}: image_mean",
                           f"expected values in [0, 1], got {self.image_mean}")
    if not all(x > 0 for x in self.image_std):
      raise VisRegionError(f"{where}: image_std",
                           f"expected values above 0, got {self.image_std}")
    if not (_is_real(self.rescale_factor) and self.rescale_factor > 0):
      raise VisRegionError(f"{where}: rescale_factor",
                           f"expected a positive number, got {self.rescale_factor!r}")
    if not (_is_int(self.resample) and self.resample in _RESAMPLE_FILTERS):
      raise VisRegionError(f"{where}: resample",
                           f"expected a PIL resampling filter {sorted(_RESAMPLE_FILTERS)}, "
                           f"got {self.resample!r}")

  @classmethod
  def clip_336(cls) -> "ImageProcessorConfig":
    """CLIP ViT-L/14-336, LLaVA-1.5's vision tower."""
    return cls(kind="clip", size=336, crop_size=336, image_mean=CLIP_MEAN, image_std=CLIP_STD)

  @classmethod
  def siglip_384(cls) -> "ImageProcessorConfig":
    """SigLIP so400m-patch14-384, Bunny's vision tower."""
    return cls(kind="siglip", size=384, crop_size=None, image_mean=SIGLIP_MEAN,
               image_std=SIGLIP_STD)

  @property
  def background(self) -> tuple[int, int, int]:
    """LLaVA's pad colour: the mean truncated to uint8, so padding normalizes to about 0."""
    return tuple(int(x * 255) for x in self.image_mean)

  @classmethod
  def from_hf_dict(cls, d: Mapping, where: str) -> "ImageProcessorConfig":
    """Reads a `preprocessor_config.json` (or a processor_config.json's "image_processor");
    absent or null keys take transformers' defaults.

    "...Fast" / "...Pil" processor names are read as their PIL twins: same settings, and
    our pixels are the PIL processor's. Steps we do not run must be off and the ones we
    always run on, so a config never silently means something else here than in
    transformers; LlavaImageProcessor's `do_pad` is LLaVA's pad-to-square, read by
    `hf_pads_to_square`.
    """
    if not isinstance(d, Mapping):
      raise VisRegionError(where, "expected a preprocessor_config.json mapping")
    name = d.get("image_processor_type") or d.get("feature_extractor_type")
    name = name.removesuffix("Fast").removesuffix("Pil") if isinstance(name, str) else None
    kind = _llava_kind(d) if name == _LLAVA else _HF_KINDS.get(name)
    if kind is None:
      raise VisRegionError(f"{where}: image_processor_type",
                           f"expected {' or '.join((*_HF_KINDS, _LLAVA))}, got {name!r}")
    d = {**_HF_DEFAULTS[kind], "rescale_factor": 1 / 255, "resample": int(Image.Resampling.BICUBIC),
         **{k: v for k, v in d.items() if v is not None}}
    wanted = {**dict.fromkeys(_HF_ALWAYS_ON, True), "do_center_crop": kind == "clip"}
    for key, value in d.items():
      want = wanted.get(key, False)
      if key.startswith("do_") and bool(value) != want and not (key == "do_pad" and name == _LLAVA):
        raise VisRegionError(f"{where}: {key}", f"expected {str(want).lower()} for "
                             f"{name if name == _LLAVA else _HF_NAMES[kind]} here, got {value!r}")
    if kind == "clip":
      size = _hf_edge(d["size"], ("shortest_edge",), f"{where}: size")
      crop_size = _hf_edge(d["crop_size"], ("height", "width"), f"{where}: crop_size")
    else:
      # transformers would read a bare integer as a SigLIP shortest edge and not crop.
      size = _hf_edge(d["size"], ("height", "width"), f"{where}: size", allow_int=False)
      crop_size = None
    return cls(kind=kind, size=size, crop_size=crop_size, image_mean=d["image_mean"],
               image_std=d["image_std"], rescale_factor=d["rescale_factor"],
               resample=d["resample"], where=where)

  def to_hf_dict(self, pad_to_square: bool | None = None) -> dict:
    """The `preprocessor_config.json` transformers writes for this preprocessing.

    With `pad_to_square` set, llava-hf's LlavaImageProcessor (what LlavaProcessor loads)
    with LLaVA's padding on or off; else the tower's own CLIP / SigLIP processor.
    """
    name = _HF_NAMES[self.kind] if pad_to_square is None else _LLAVA
    d = {"image_processor_type": name, "do_convert_rgb": True, "do_resize": True,
         "resample": int(self.resample), "do_rescale": True, "rescale_factor": self.rescale_factor,
         "do_normalize": True, "image_mean": list(self.image_mean),
         "image_std": list(self.image_std)}
    if self.kind == "clip":
      d.update(size={"shortest_edge": self.size}, do_center_crop=True,
               crop_size={"height": self.crop_size, "width": self.crop_size})
    else:
      d["size"] = {"height": self.size, "width": self.size}
      if pad_to_square is not None:
        d["do_center_crop"] = False
    if pad_to_square is not None:
      d["do_pad"] = bool(pad_to_square)
    return d


def hf_pads_to_square(d: Mapping) -> bool:
  """Whether an image processor config pads to square first (LlavaImageProcessor's `do_pad`)."""
  name = d.get("image_processor_type") or ""
  return name.removesuffix("Fast").removesuffix("Pil") == _LLAVA and bool(d.get("do_pad"))


def _llava_kind(d: Mapping) -> str:
  """LlavaImageProcessor runs CLIP's steps, or SigLIP's for a square size and no crop."""
  size = d.get("size")
  square = isinstance(size, Mapping) and set(size) == {"height", "width"}
  return "siglip" if square and d.get("do_center_crop") is False else "clip"


def _hf_edge(value, keys: tuple[str, ...], where: str, allow_int: bool = True) -> int:
  """The edge of a square in transformers' size forms: `{key: n, ...}` or a bare n."""
  if allow_int and _is_int(value):
    return value
  if isinstance(value, Mapping) and set(value) == set(keys):
    edges = [value[k] for k in keys]
    if all(_is_int(e) for e in edges) and len(set(edges)) == 1:
      return edges[0]
  form = "{" + ", ".join(f'"{k}": n' for k in keys) + "}"
  raise VisRegionError(where, f"expected {form}{' or an integer n' if allow_int else ''}"
                       f"{' (a square)' if len(keys) > 1 else ''}, got {value!r}")


def to_rgb(image: ImageLike, where: str = "image") -> np.ndarray:
  """uint8 [H, W, 3], transparency composited onto white as transformers does.

  LLaVA's own data loaders call `Image.convert("RGB")`, which drops alpha instead; we
  follow transformers so our pixels are the ones HF inference feeds the same model.
  Arrays are channels-last uint8: [H, W], [H, W, 1], [H, W, 3] or [H, W, 4].
  """
  if isinstance(image, Image.Image):
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    image = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
  elif not (isinstance(image, np.ndarray) and image.dtype == np.uint8
            and (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (1, 3, 4)))):
    got = (f"a {image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
           else type(image).__name__)
    raise VisRegionError(where, "expected a PIL image or a uint8 array [H, W] or [H, W, 1|3|4], "
                         f"got {got}")
  if min(image.shape[:2]) == 0:
    raise VisRegionError(where, f"expected a non-empty image, got shape {image.shape}")
  if image.ndim == 2 or image.shape[-1] == 1:
    return np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
  if image.shape[-1] == 4:
    # transformers' array formula; PIL's alpha_composite onto white, which it uses for
    # PIL images, gives the same bytes for every (colour, alpha) pair.
    alpha = image[..., 3:] / 255
    return np.round(alpha * image[..., :3] + (1 - alpha) * 255).astype(np.uint8)
  return image


def expand_to_square(image: ImageLike, background: Sequence[int]) -> np.ndarray:
  """LLaVA's `expand2square` ("pad" aspect mode): the image centred on a square canvas.

  Padding rather than cropping keeps the whole image in view; LLaVA-1.5 and Bunny
  train with it, filling with `ImageProcessorConfig.background`. Returns uint8
  [S, S, 3] with S the longer side; on odd margins the extra row / column goes last.
  """
  if not (isinstance(background, Sequence) and len(background) == 3
          and all(_is_int(c) and 0 <= c <= 255 for c in background)):
    raise VisRegionError("background", f"expected 3 integers in [0, 255], got {background!r}")
  rgb = to_rgb(image)
  height, width = rgb.shape[:2]
  if height == width:
    return rgb
  side = max(height, width)
  canvas = np.empty((side, side, 3), np.uint8)
  canvas[...] = background
  top, left = (side - height) // 2, (side - width) // 2
  canvas[top:top + height, left:left + width] = rgb
  return canvas


def preprocess(images: Sequence[ImageLike], config: ImageProcessorConfig,
               pad_to_square: bool = True) -> np.ndarray:
  """float32 [N, H, W, 3] pixel values: transformers' `pixel_values`, channels last.

  `pad_to_square` applies LLaVA's "pad" aspect mode first, as LLaVA-1.5 and Bunny
  train; without it CLIP sees only the center square and SigLIP a squashed image.
  """
  if isinstance(images, (Image.Image, np.ndarray, str)) or not isinstance(images, Sequence) \
      or not images:
    raise VisRegionError("images", "expected a non-empty list of images")
  return np.stack([_pixels(image, config, pad_to_square, f"images[{i}]")
                   for i, image in enumerate(images)])


def _resized_shape(height: int, width: int, config: ImageProcessorConfig) -> tuple[int, int]:
  """transformers' target (H, W); CLIP truncates the long edge rather than rounding it."""
  if config.kind == "siglip":
    return config.size, config.size
  short, long = sorted((height, width))
  long = int(config.size * long / short)
  return (long, config.size) if width <= height else (config.size, long)


def _pixels(image: ImageLike, config: ImageProcessorConfig, pad_to_square: bool,
            where: str) -> np.ndarray:
  rgb = to_rgb(image, where)
  if pad_to_square:
    rgb = expand_to_square(rgb, config.background)
  height, width = _resized_shape(*rgb.shape[:2], config)
  pixels = np.asarray(Image.fromarray(rgb).resize((width, height), resample=config.resample))
  if config.crop_size is not None:
    top, left = (height - config.crop_size) // 2, (width - config.crop_size) // 2
    pixels = pixels[top:top + config.crop_size, left:left + config.crop_size]
  pixels = (pixels.astype(np.float64) * config.rescale_factor).astype(np.float32)
  mean, std = (np.asarray(v, np.float32) for v in (config.image_mean, config.image_std))
  return (pixels - mean) / std
