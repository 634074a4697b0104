"""`python -m visregion_jax.convert from-hf | to-hf | to-gguf`: move weights between HF, JAX
and llama.cpp's GGUF."""

import os
import sys

from visregion_jax import cli
from visregion_jax.convert import jax_checkpoint
from visregion_jax.convert.gguf_export import TENSOR_TYPES, check_exportable, default_tensor_type, write_gguf
from visregion_jax.convert.hf import to_hf
from visregion_jax.data.templates import TEMPLATES
from visregion_jax.errors import VisRegionError
from visregion_jax.loading import load_model, peek_model
from visregion_jax.models.lvlm import LVLM


def _add_original_options(parser) -> None:
  group = parser.add_argument_group("original LLaVA / Bunny checkpoints")
  group.add_argument("--vision-tower", default=None,
                     help="the CLIP / SigLIP HF directory that mm_vision_tower names")
  group.add_argument("--adapter", default=None, help="a PEFT LoRA adapter directory, merged on import")
  group.add_argument("--image-token-id", type=int, default=None,
                     help="the token id marking image features (default: add an <image> token)")
  group.add_argument("--template", choices=sorted(TEMPLATES), default=None,
                     help="the conversation format the checkpoint trained with, written as its chat template "
                     "(default vicuna_v1: LLaVA-1.5's and Bunny's USER: <image>\\n... ASSISTANT:)")


def _parse_size(text: str) -> int:
  """Bytes of a size like 5GB, 500MB or 1048576; at least one byte."""
  units = {"KB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3, "KIB": 1024, "MIB": 1024 ** 2, "GIB": 1024 ** 3}
  upper, size = text.strip().upper(), None
  for unit, factor in sorted(units.items(), key=lambda u: -len(u[0])):
    if upper.endswith(unit) and upper[:-len(unit)].strip().replace(".", "", 1).isdigit():
      size = int(float(upper[:-len(unit)]) * factor)
      break
  if size is None and upper.isdigit():
    size = int(upper)
  if not size or size < 1:
    raise VisRegionError("--max-shard-size", f"expected a positive size like 5GB or 500MB, got {text!r}")
  return size


def main(argv=None) -> int:
  parser = cli.ArgumentParser(prog="python -m visregion_jax.convert",
                              description="Convert models between Hugging Face and visregion_jax.")
  sub = parser.add_subparsers(dest="command", required=True)
  to = sub.add_parser("to-hf", help="training workdir, JAX checkpoint, HF dir or .gguf -> HF directory")
  to.add_argument("--src", required=True, help="a training workdir (its latest checkpoint, LoRA merged), "
                  "a JAX checkpoint directory, an HF directory, a .gguf file or an original LLaVA checkpoint")
  to.add_argument("--dst", required=True, help="the HF directory to write")
  to.add_argument("--max-shard-size", default="5GB", help="shard the safetensors above this size")
  to.add_argument("--param-dtype", choices=("float32", "bfloat16", "float16"), default=None,
                  help="cast weights on the way (default: keep their dtype)")
  to.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --dst")
  _add_original_options(to)
  frm = sub.add_parser("from-hf", help="HF directory or .gguf file -> JAX checkpoint directory")
  frm.add_argument("--src", required=True, help="HF directory, .gguf file or smollm2-135m-instruct")
  frm.add_argument("--dst", required=True, help="the JAX checkpoint directory to write")
  frm.add_argument("--param-dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="cast weights on the way (default: keep their dtype)")
  _add_original_options(frm)
  gg = sub.add_parser("to-gguf", help="training workdir, JAX checkpoint, HF dir or .gguf -> one GGUF file "
                      "that llama.cpp runs (an LVLM's decoder; --mmproj adds its vision side)")
  gg.add_argument("--src", required=True, help="a training workdir, a JAX checkpoint directory, an HF "
                  "directory, a .gguf file or an original LLaVA checkpoint")
  gg.add_argument("--dst", required=True, help="the .gguf file to write (replaced whole)")
  gg.add_argument("--type", choices=TENSOR_TYPES, default=None, help="tensor type (default: the weights' "
                  "dtype); norms stay f32, and q8_0 rows that are not a multiple of 32 are written as f16")
  gg.add_argument("--mmproj", default=None, help="also write an LVLM's vision tower and projector to this "
                  "llama.cpp mmproj .gguf file")
  _add_original_options(gg)
  args = parser.parse_args(argv)
  original = dict(vision_tower=args.vision_tower, adapter=args.adapter, template=args.template,
                  image_token_id=args.image_token_id)

  def run():
    if args.command == "to-gguf":
      return to_gguf(args, original)
    # Check the destination before the (possibly long) load.
    if os.path.exists(args.dst) and not os.path.isdir(args.dst):
      raise VisRegionError(args.dst, "expected a directory, found a file")
    overwrite = args.command == "to-hf" and args.overwrite
    if os.path.isdir(args.dst) and os.listdir(args.dst) and not overwrite:
      hint = " (or pass --overwrite)" if args.command == "to-hf" else ""
      raise VisRegionError(args.dst, f"expected a new or empty directory{hint}")
    if args.command == "from-hf":
      jax_checkpoint.write_model(load_model(args.src, param_dtype=args.param_dtype, **original), args.dst)
    else:
      max_shard = _parse_size(args.max_shard_size)
      to_hf(load_model(args.src, param_dtype=args.param_dtype, **original), args.dst, max_shard_bytes=max_shard)
    print(f"wrote {args.dst}")

  return cli.run_main(run)


def _check_file_destination(path: str, flag: str) -> None:
  if os.path.isdir(path):
    raise VisRegionError(path, f"{flag}: expected a file path, found a directory")
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise VisRegionError(parent, f"{flag}: expected an existing directory to write into")


def to_gguf(args, original: dict) -> None:
  """Every check that needs no weights first (destinations, architecture, --mmproj), then
  the load and the export."""
  _check_file_destination(args.dst, "--dst")
  if args.mmproj is not None:
    _check_file_destination(args.mmproj, "--mmproj")
  kind, text = peek_model(args.src, **original)
  if text is not None:
    check_exportable(text, text.source or args.src)
  if args.mmproj is not None and kind != "lvlm":
    raise VisRegionError(args.src, "--mmproj: expected an LVLM (vision tower + projector + decoder), "
                         "got a decoder-only model")
  model = load_model(args.src, **original)
  decoder = model.language_model if isinstance(model, LVLM) else model
  tensor_type = args.type or default_tensor_type(decoder)
  write_gguf(decoder, args.dst, tensor_type=tensor_type)
  print(f"wrote {args.dst}")
  if args.mmproj is not None:
    from visregion_jax.convert.gguf_mmproj import write_mmproj  # pylint: disable=import-outside-toplevel
    write_mmproj(model, args.mmproj, tensor_type=tensor_type)
    print(f"wrote {args.mmproj}")


if __name__ == "__main__":
  sys.exit(main())
