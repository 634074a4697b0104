"""Our preprocessing is transformers' CLIP / SigLIP PIL image processors, to 1e-5.

The references are transformers' own pieces (`convert_to_rgb`, the processors) and a
copy of LLaVA's `expand2square`, so none of the code under test builds its reference.
"""

import json
import re

import numpy as np
import pytest
import skimage.data
from PIL import Image
from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil
from transformers.image_transforms import convert_to_rgb

from visregion_jax.data.image_processing import ImageProcessorConfig, expand_to_square, preprocess, to_rgb
from visregion_jax.errors import VisRegionError

CONFIGS = {"clip_336": ImageProcessorConfig.clip_336, "siglip_384": ImageProcessorConfig.siglip_384}


def _noise(shape, seed):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _logo_fading_out():
  """skimage's logo is RGBA but fully opaque; this one fades to transparent left to right."""
  logo = skimage.data.logo()
  logo[..., 3] = np.linspace(255, 0, logo.shape[1]).astype(np.uint8)
  return Image.fromarray(logo[:, 40:])


def _palette_with_transparency():
  image = Image.fromarray(skimage.data.chelsea()).quantize(16)
  image.info["transparency"] = 0
  return image


IMAGES = {
    "astronaut": skimage.data.astronaut,  # 512x512 RGB array
    "coffee_pil": lambda: Image.fromarray(skimage.data.coffee()),  # 400x600
    "chelsea": skimage.data.chelsea,  # 300x451
    "camera_hw_array": skimage.data.camera,  # grayscale [H, W]
    "camera_pil_L": lambda: Image.fromarray(skimage.data.camera()[:300]),
    "logo_pil_rgba": lambda: Image.fromarray(skimage.data.logo()),  # RGBA, alpha all 255
    "logo_hwc4_array": lambda: skimage.data.logo()[60:],
    "logo_pil_rgba_fading": _logo_fading_out,
    "noise_333x517": lambda: _noise((333, 517, 3), 0),
    "tall_strip_7x1": lambda: _noise((7, 1, 3), 1),
    "wide_strip_19x601": lambda: Image.fromarray(_noise((19, 601, 3), 2)),
    "noise_pil_rgba": lambda: Image.fromarray(_noise((45, 80, 4), 3), "RGBA"),
    "noise_pil_LA": lambda: Image.fromarray(_noise((37, 53, 2), 4), "LA"),
    "noise_hw1_array": lambda: _noise((20, 9, 1), 5),
    "chelsea_pil_P": lambda: Image.fromarray(skimage.data.chelsea()).quantize(64),
    "chelsea_pil_P_transparent": _palette_with_transparency,
}


@pytest.fixture(scope="module")
def hf_processors():
  """transformers' PIL ("slow") processors: the plain names need torchvision since v5."""
  return {
      "clip_336": CLIPImageProcessorPil(
          size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
          do_center_crop=True, resample=Image.Resampling.BICUBIC,
          image_mean=[0.48145466, 0.4578275, 0.40821073],
          image_std=[0.26862954, 0.26130258, 0.27577711]),
      "siglip_384": SiglipImageProcessorPil(
          size={"height": 384, "width": 384}, resample=Image.Resampling.BICUBIC,
          image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]),
  }


def llava_expand2square(pil_img, background_color):
  """LLaVA's llava/mm_utils.py `expand2square`, verbatim but for style."""
  width, height = pil_img.size
  if width == height:
    return pil_img
  if width > height:
    result = Image.new(pil_img.mode, (width, width), background_color)
    result.paste(pil_img, (0, (width - height) // 2))
    return result
  result = Image.new(pil_img.mode, (height, height), background_color)
  result.paste(pil_img, ((height - width) // 2, 0))
  return result


def hf_pixels(processor, image, pad_to_square) -> np.ndarray:
  """transformers' NHWC pixel values, after LLaVA's padding of transformers' RGB image."""
  if isinstance(image, np.ndarray) and image.ndim == 2:
    image = image[..., None]  # transformers reads a 2-D array as a list of rows
  if pad_to_square:
    background = tuple(int(x * 255) for x in processor.image_mean)
    image = llava_expand2square(Image.fromarray(convert_to_rgb(image, return_numpy=True)),
                                background)
  return processor(image, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)


@pytest.mark.parametrize("pad_to_square", [True, False], ids=["pad", "nopad"])
@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("image_name", sorted(IMAGES))
def test_matches_transformers(image_name, config_name, pad_to_square, hf_processors):
  image = IMAGES[image_name]()
  ours = preprocess([image], CONFIGS[config_name](), pad_to_square=pad_to_square)
  theirs = hf_pixels(hf_processors[config_name], image, pad_to_square)
  assert ours.dtype == np.float32
  assert ours.shape == theirs.shape
  assert np.abs(ours - theirs).max() <= 1e-5


def test_batch_is_the_stack_of_single_images():
  images = [IMAGES[name]() for name in ("chelsea", "logo_pil_rgba", "tall_strip_7x1")]
  config = ImageProcessorConfig.clip_336()
  batch = preprocess(images, config)
  assert batch.shape == (3, 336, 336, 3)
  for row, image in zip(batch, images):
    np.testing.assert_array_equal(row, preprocess([image], config)[0])


def test_expand_to_square_by_hand():
  wide = np.array([[[10, 20, 30], [40, 50, 60], [70, 80, 90]]], np.uint8)  # 1 x 3
  bg = [1, 2, 3]
  np.testing.assert_array_equal(expand_to_square(wide, (1, 2, 3)),
                                [[bg, bg, bg], wide[0], [bg, bg, bg]])
  tall = np.arange(4 * 1 * 3, dtype=np.uint8).reshape(4, 1, 3)  # 4 x 1: one spare column right
  out = expand_to_square(tall, (1, 2, 3))
  assert out.shape == (4, 4, 3)
  np.testing.assert_array_equal(out[:, 1], tall[:, 0])
  assert (out[:, [0, 2, 3]] == bg).all()
  square = np.zeros((2, 2, 3), np.uint8)
  np.testing.assert_array_equal(expand_to_square(square, (1, 2, 3)), square)


@pytest.mark.parametrize("height,width", [(5, 8), (8, 5), (6, 9), (9, 6), (1, 2), (2, 1), (7, 7)])
def test_expand_to_square_matches_llava(height, width):
  image = _noise((height, width, 3), height * 10 + width)
  expected = llava_expand2square(Image.fromarray(image), (122, 116, 104))
  np.testing.assert_array_equal(expand_to_square(image, (122, 116, 104)), np.asarray(expected))


def test_background_is_the_mean_colour_and_normalizes_to_about_zero():
  assert ImageProcessorConfig.clip_336().background == (122, 116, 104)
  assert ImageProcessorConfig.siglip_384().background == (127, 127, 127)
  config = ImageProcessorConfig.clip_336()
  # 10 x 10 after padding, the image in rows 4-5: bicubic leaves rows < 2 * 33.6 pure padding.
  pixels = preprocess([_noise((2, 10, 3), 0)], config)[0]
  mean, std = np.float32(config.image_mean), np.float32(config.image_std)
  expected = (np.float32(np.float32(config.background) / 255) - mean) / std
  np.testing.assert_allclose(pixels[:60], np.broadcast_to(expected, (60, 336, 3)), atol=1e-6)
  assert np.abs(expected).max() < 0.02


def test_transparency_goes_onto_white_like_transformers():
  rgba = np.array([[[200, 100, 0, 0], [200, 100, 0, 128], [200, 100, 0, 255]]], np.uint8)
  expected = [[[255, 255, 255], [227, 177, 127], [200, 100, 0]]]
  np.testing.assert_array_equal(to_rgb(rgba), expected)
  np.testing.assert_array_equal(to_rgb(Image.fromarray(rgba, "RGBA")), expected)


@pytest.mark.parametrize("config", [
    ImageProcessorConfig.clip_336(), ImageProcessorConfig.siglip_384(),
    ImageProcessorConfig(kind="clip", size=256, crop_size=224, image_mean=(0.1, 0.2, 0.3),
                         image_std=(0.4, 0.5, 0.6), rescale_factor=0.5 / 255, resample=2),
], ids=["clip_336", "siglip_384", "custom"])
def test_hf_dict_round_trip(config):
  d = json.loads(json.dumps(config.to_hf_dict()))
  assert ImageProcessorConfig.from_hf_dict(d, "preprocessor_config.json") == config


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_exported_dict_loads_in_transformers(config_name):
  config = CONFIGS[config_name]()
  cls = {"clip": CLIPImageProcessorPil, "siglip": SiglipImageProcessorPil}[config.kind]
  processor = cls.from_dict(config.to_hf_dict())
  image = skimage.data.coffee()
  np.testing.assert_array_equal(preprocess([image], config, pad_to_square=False),
                                hf_pixels(processor, image, pad_to_square=False))


def test_reads_hub_style_configs():
  legacy_clip = {  # openai/clip-vit-large-patch14-336 predates size dicts
      "crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
      "feature_extractor_type": "CLIPFeatureExtractor",
      "image_mean": [0.48145466, 0.4578275, 0.40821073],
      "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 336}
  assert ImageProcessorConfig.from_hf_dict(legacy_clip, "clip") == ImageProcessorConfig.clip_336()
  siglip = {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5] * 3,
            "image_processor_type": "SiglipImageProcessor", "image_std": [0.5] * 3,
            "processor_class": "SiglipProcessor", "resample": 3,
            "rescale_factor": 0.00392156862745098, "size": {"height": 384, "width": 384}}
  assert ImageProcessorConfig.from_hf_dict(siglip, "siglip") == ImageProcessorConfig.siglip_384()
  fast = {**siglip, "image_processor_type": "SiglipImageProcessorFast"}
  assert ImageProcessorConfig.from_hf_dict(fast, "siglip") == ImageProcessorConfig.siglip_384()
  defaults = {"image_processor_type": "CLIPImageProcessor", "size": None}
  assert ImageProcessorConfig.from_hf_dict(defaults, "clip") == ImageProcessorConfig(
      kind="clip", size=224, crop_size=224, image_mean=(0.48145466, 0.4578275, 0.40821073),
      image_std=(0.26862954, 0.26130258, 0.27577711))


@pytest.mark.parametrize("change,key", [
    ({"image_processor_type": "ViTImageProcessor"}, "image_processor_type"),
    ({"size": {"shortest_edge": 0}}, "size"),
    ({"size": {"height": 336, "width": 336}}, "size"),
    ({"crop_size": {"height": 336, "width": 300}}, "crop_size"),
    ({"crop_size": 400}, "crop_size"),
    ({"image_mean": [0.5, 0.5]}, "image_mean"),
    ({"image_mean": [0.5, 0.5, 128]}, "image_mean"),
    ({"image_std": [0.5, 0.0, 0.5]}, "image_std"),
    ({"rescale_factor": -1.0}, "rescale_factor"),
    ({"resample": 9}, "resample"),
    ({"do_normalize": False}, "do_normalize"),
    ({"do_center_crop": False}, "do_center_crop"),
    ({"do_pad": True}, "do_pad"),
])
def test_bad_clip_config_key(change, key):
  d = {**ImageProcessorConfig.clip_336().to_hf_dict(), **change}
  with pytest.raises(VisRegionError, match=f"^preprocessor_config.json: {key}: expected"):
    ImageProcessorConfig.from_hf_dict(d, "preprocessor_config.json")


@pytest.mark.parametrize("change,key", [
    ({"size": 384}, "size"),  # transformers would read it as a shortest edge for SigLIP
    ({"do_center_crop": True, "crop_size": {"height": 384, "width": 384}}, "do_center_crop"),
])
def test_bad_siglip_config_key(change, key):
  d = {**ImageProcessorConfig.siglip_384().to_hf_dict(), **change}
  with pytest.raises(VisRegionError, match=f"^cfg: {key}: expected"):
    ImageProcessorConfig.from_hf_dict(d, "cfg")


def test_config_that_is_not_a_mapping():
  with pytest.raises(VisRegionError, match="^cfg: expected"):
    ImageProcessorConfig.from_hf_dict([1, 2], "cfg")


@pytest.mark.parametrize("images,where", [
    ([np.zeros((4, 4, 3), np.float32)], "images[0]"),
    ([np.zeros((4, 4), np.uint8), np.zeros((4, 4, 2), np.uint8)], "images[1]"),
    ([np.zeros((0, 4, 3), np.uint8)], "images[0]"),
    ([], "images"),
    (Image.new("RGB", (4, 4)), "images"),
    (["photo.jpg"], "images[0]"),
])
def test_bad_images(images, where):
  with pytest.raises(VisRegionError, match=f"^{re.escape(where)}: expected"):
    preprocess(images, ImageProcessorConfig.clip_336())


def test_bad_background():
  with pytest.raises(VisRegionError, match="^background: expected"):
    expand_to_square(np.zeros((2, 3, 3), np.uint8), (256, 0, 0))
