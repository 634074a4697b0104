"""`python -m visregion_jax.generate --model MODEL "prompt" ["prompt" ...]`: answers
prompts with a model through its chat template (greedy unless --temperature > 0)."""

import argparse
import sys

from visregion_jax import cli
from visregion_jax.convert import load_tokenizer
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
  parser.add_argument("prompts", nargs="+")
  args = parser.parse_args(argv)

  def run():
    model = load_model(args.model)
    tok = load_tokenizer(model.config.source)
    replies = chat(model, tok, args.prompts, max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, top_p=args.top_p)
    for prompt, reply in zip(args.prompts, replies):
      print(f"> {prompt}\n{reply}\n")

  return cli.run_main(run)


if __name__ == "__main__":
  sys.exit(main())
