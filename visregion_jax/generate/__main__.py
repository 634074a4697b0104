"""`python -m visregion_jax.generate --model MODEL [--image IMG ...] "prompt" ["prompt" ...]`:
answers prompts with a model through its chat template (greedy unless --temperature > 0);
an LVLM answers about images, preprocessed as its processor files say."""

import argparse
import os
import sys

from visregion_jax import cli
from visregion_jax.convert import load_tokenizer
from visregion_jax.convert.processor import read_image_processor
from visregion_jax.errors import VisRegionError
from visregion_jax.generate.decode import chat
from visregion_jax.loading import load_model


def _bounded(kind, low, high=None, low_open=False):
  """An argparse type: `kind` within [low, high] (low excluded when `low_open`)."""
  def parse(text: str):
    try:
      value = kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
    if value != value or (value <= low if low_open else value < low) or (high is not None and value > high):
      bounds = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
      raise argparse.ArgumentTypeError(f"expected a value {bounds}, got {text}")
    return value
  return parse


def _open_images(paths: list, num_prompts: int) -> list:
  """One list of images per prompt, every file read and checked up front."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=import-outside-toplevel
  if len(paths) not in (0, 1, num_prompts):
    raise VisRegionError("--image", f"expected one image, or one per prompt ({num_prompts}), got {len(paths)}")
  opened = []
  for path in paths:
    if not os.path.isfile(path):
      raise VisRegionError(path, "expected an image file")
    try:
      with Image.open(path) as image:
        image.load()
        opened.append(image.copy())
    except (UnidentifiedImageError, OSError) as e:
      raise VisRegionError(path, f"expected a readable image file ({e})") from None
  if len(opened) == 1:
    return [opened] * num_prompts
  return [[image] for image in opened]


def main(argv=None) -> int:
  parser = cli.ArgumentParser(prog="python -m visregion_jax.generate",
                              description="Answer prompts with a model through its chat template.")
  parser.add_argument("--model", default="smollm2-135m-instruct",
                      help="HF directory, .gguf file, smollm2-135m-instruct, a JAX checkpoint "
                      "directory or a training workdir")
  parser.add_argument("--max-new-tokens", type=_bounded(int, 1, 1 << 16), default=48,
                      help="tokens to generate per prompt (1..65536)")
  parser.add_argument("--temperature", type=_bounded(float, 0.0, 100.0), default=0.0,
                      help="0 = greedy; > 0 samples")
  parser.add_argument("--top-p", type=_bounded(float, 0.0, 1.0, low_open=True), default=1.0,
                      help="nucleus sampling mass, in (0, 1]")
  parser.add_argument("--image", action="append", default=[], metavar="IMG",
                      help="an image file for an LVLM: once (every prompt asks about it) or once per "
                      "prompt (the i-th prompt asks about the i-th image)")
  parser.add_argument("prompts", nargs="+")
  args = parser.parse_args(argv)

  def run():
    images = _open_images(args.image, len(args.prompts))  # before the (long) model load
    model = load_model(args.model)
    tok = load_tokenizer(model.config.source)
    vision = {}
    if images:
      if getattr(model.config, "vision", None) is None:
        raise VisRegionError("--image", f"expected a vision-language model, {args.model} is a text decoder")
      image_processor, pad = read_image_processor(model.config.source)
      vision = dict(images=images, image_processor=image_processor, pad_to_square=pad)
    replies = chat(model, tok, args.prompts, max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, top_p=args.top_p, **vision)
    for i, (prompt, reply) in enumerate(zip(args.prompts, replies)):
      about = f" [{args.image[min(i, len(args.image) - 1)]}]" if args.image else ""
      print(f">{about} {prompt}\n{reply}\n")

  return cli.run_main(run)


if __name__ == "__main__":
  sys.exit(main())
