"""`python -m visregion_jax.convert from-hf | to-hf`: move weights between HF and JAX."""

import os
import sys

from visregion_jax import cli
from visregion_jax.convert import jax_checkpoint
from visregion_jax.convert.hf import from_hf, to_hf
from visregion_jax.convert.llava_original import from_llava_original, is_llava_original
from visregion_jax.errors import VisRegionError


def load_hf(src: str, dtype=None, param_dtype=None, **original):
  """Anything from_hf reads (HF dir, .gguf, alias), or an original LLaVA / Bunny checkpoint:
  detected from its config.json, or implied by an `original` option (vision_tower,
  adapter, image_token_id) of from_llava_original."""
  if any(v is not None for v in original.values()) or is_llava_original(src):
    return from_llava_original(src, dtype=dtype, param_dtype=param_dtype, **original)
  return from_hf(src, dtype=dtype, param_dtype=param_dtype)


def is_training_workdir(path: str) -> bool:
  return os.path.isdir(os.path.join(path, "checkpoints")) and os.path.isfile(os.path.join(path, "config.json"))


def load_any(src: str, dtype=None, param_dtype=None, **original):
  """A training workdir (its latest checkpoint), a JAX checkpoint directory, or anything
  load_hf reads."""
  if is_training_workdir(src):
    from visregion_jax.train import load_trained_model  # pylint: disable=import-outside-toplevel
    return load_trained_model(src)
  if jax_checkpoint.is_model_checkpoint(src):
    return jax_checkpoint.load_model(src)
  return load_hf(src, dtype=dtype, param_dtype=param_dtype, **original)


def _add_original_options(parser) -> None:
  group = parser.add_argument_group("original LLaVA / Bunny checkpoints")
  group.add_argument("--vision-tower", default=None,
                     help="the CLIP / SigLIP HF directory that mm_vision_tower names")
  group.add_argument("--adapter", default=None, help="a PEFT LoRA adapter directory, merged on import")
  group.add_argument("--image-token-id", type=int, default=None,
                     help="the token id marking image features (default: add an <image> token)")


def _parse_size(text: str) -> int:
  units = {"KB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3, "KIB": 1024, "MIB": 1024 ** 2, "GIB": 1024 ** 3}
  upper = text.strip().upper()
  for unit, factor in sorted(units.items(), key=lambda u: -len(u[0])):
    if upper.endswith(unit) and upper[:-len(unit)].strip().replace(".", "", 1).isdigit():
      return int(float(upper[:-len(unit)]) * factor)
  if upper.isdigit():
    return int(upper)
  raise VisRegionError("--max-shard-size", f"expected a size like 5GB or 500MB, got {text!r}")


def main(argv=None) -> int:
  parser = cli.ArgumentParser(prog="python -m visregion_jax.convert",
                              description="Convert models between Hugging Face and visregion_jax.")
  sub = parser.add_subparsers(dest="command", required=True)
  to = sub.add_parser("to-hf", help="JAX checkpoint (or HF dir / .gguf) -> HF directory")
  to.add_argument("--src", required=True)
  to.add_argument("--dst", required=True)
  to.add_argument("--max-shard-size", default="5GB", help="shard the safetensors above this size")
  to.add_argument("--param-dtype", choices=("float32", "bfloat16", "float16"), default=None,
                  help="cast weights on the way (default: keep their dtype)")
  to.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --dst")
  _add_original_options(to)
  frm = sub.add_parser("from-hf", help="HF directory or .gguf file -> JAX checkpoint directory")
  frm.add_argument("--src", required=True, help="HF directory, .gguf file or smollm2-135m-instruct")
  frm.add_argument("--dst", required=True)
  frm.add_argument("--param-dtype", choices=("float32", "bfloat16", "float16"), default=None)
  _add_original_options(frm)
  args = parser.parse_args(argv)
  original = dict(vision_tower=args.vision_tower, adapter=args.adapter,
                  image_token_id=args.image_token_id)

  def run():
    # Check the destination before the (possibly long) load.
    if os.path.exists(args.dst) and not os.path.isdir(args.dst):
      raise VisRegionError(args.dst, "expected a directory, found a file")
    overwrite = args.command == "to-hf" and args.overwrite
    if os.path.isdir(args.dst) and os.listdir(args.dst) and not overwrite:
      hint = " (or pass --overwrite)" if args.command == "to-hf" else ""
      raise VisRegionError(args.dst, f"expected a new or empty directory{hint}")
    if args.command == "from-hf":
      jax_checkpoint.save_model(load_hf(args.src, param_dtype=args.param_dtype, **original), args.dst)
    else:
      max_shard = _parse_size(args.max_shard_size)
      model = load_any(args.src, param_dtype=args.param_dtype, **original)
      to_hf(model, args.dst, max_shard_bytes=max_shard)
    print(f"wrote {args.dst}")

  return cli.run_main(run)


if __name__ == "__main__":
  sys.exit(main())
