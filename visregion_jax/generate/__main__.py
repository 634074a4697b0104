"""`python -m visregion_jax.generate --model MODEL "prompt" ["prompt" ...]`: answers
prompts with a model through its chat template (greedy unless --temperature > 0)."""

import sys

from visregion_jax import cli
from visregion_jax.convert import load_tokenizer
from visregion_jax.generate.decode import chat
from visregion_jax.loading import load_model


def main(argv=None) -> int:
  parser = cli.ArgumentParser(prog="python -m visregion_jax.generate",
                              description="Answer prompts with a model through its chat template.")
  parser.add_argument("--model", default="smollm2-135m-instruct",
                      help="HF directory, .gguf file, smollm2-135m-instruct, a JAX checkpoint "
                      "directory or a training workdir")
  parser.add_argument("--max-new-tokens", type=int, default=48)
  parser.add_argument("--temperature", type=float, default=0.0)
  parser.add_argument("--top-p", type=float, default=1.0)
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
