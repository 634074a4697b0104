"""The region study: the paper's central comparison, over seeds, with confidence intervals.

  .venv/bin/python tools/region_study.py --config configs/demo.py \\
      --workdir study_work --out docs/region_study [--seeds 3] [--arms ...] [--prune-k 6] \\
      [--prune-arms uniform,full] [--config.prune.heal_steps=20] [--config.KEY=VALUE ...]

For each of --seeds seeds (config.seed, +1, ...: the projector's initialisation, the data
order and dropout; the inputs the config's hook prepares, e.g. the demo's data and
tower, are shared) it trains one arm per layer choice with everything else equal:
  full       every decoder layer and the projector (embeddings, final norm and LM
             head stay frozen in every arm)
  uniform    the sparse uniform region, `region.fraction` of the layers
  scored     the region chosen by the probe (region.strategy="scored")
  bottom     the same number of consecutive layers from the first one
  top        the same number of consecutive layers ending at the last one
  projector  the projector alone
and measures held-out answer accuracy (`data.eval_json`, `eval.num_samples` questions),
text perplexity (`data.text_eval_json`; the untrained base is measured too), median
step time, optimizer-state bytes and, where `eval.tasks` names benchmarks, their
metrics (docs/evaluation.md; mean over seeds). Then it prunes k = 1..K layers from each
--prune-arms model: layers are scored once per model (`prune.metric` on the
calibration samples of `prune.*`) and the k lowest are removed, never a layer of the
uniform region, so every model chooses among the same candidates; with
`prune.heal_steps` > 0 each pruned model is also healed (prune/heal.py: the library's
training loop, `prune.heal_*`) and measured again.

Every number is reported as the mean over seeds with a 95% bootstrap interval over
seeds and questions (visregion_jax/bootstrap.py), and the comparisons the paper makes
as paired differences with their intervals. Outputs in --out: study.md, results.json
and the plots (tools/region_study_report.py). In --workdir: inputs/ (the config's
`{workdir}`), seed<i>/arms/NAME/ (each a normal training workdir),
seed<i>/prune/NAME/ (scores, pruned and healed measurements, healing workdirs), and
the finished pieces as JSON files. Resumable: a finished piece is read back instead of
recomputed; an interrupted arm or healing resumes from its last checkpoint.
"""

import copy
import functools
import json
import os
import statistics
import sys

from region_study_report import write_report  # pylint: disable=wrong-import-position

from visregion_jax import cli, prune, region
from visregion_jax.config.loading import load_config
from visregion_jax.console import log_line
from visregion_jax.convert import load_tokenizer, to_hf
from visregion_jax.convert.params import model_params
from visregion_jax.data.calibration import calibration_batches
from visregion_jax.data.from_config import data_config_for
from visregion_jax.errors import VisRegionError
from visregion_jax.evaluation import evaluate
from visregion_jax.hooks import load_hook
from visregion_jax.loading import load_model
from visregion_jax.models.lvlm import LVLM
from visregion_jax.prune import job as prune_job
from visregion_jax.prune.heal import heal, heal_layers
from visregion_jax.prune.latency import time_models
from visregion_jax.publish import write_file_atomically
from visregion_jax.train import loop
from visregion_jax.train.builder import build_model

ARMS = {"full": "full", "uniform": "uniform", "scored": "scored", "bottom": "first", "top": "last",
        "projector": "none"}
PRUNED_ARMS = ("uniform", "full")
MEASURED = ("eval_accuracy", "eval_hits", "text_perplexity", "text_sample_losses")


def read_json(path: str):
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write_json(path: str, value) -> None:
  """Written beside and renamed, so an interrupted write never looks finished."""
  write_file_atomically(path, json.dumps(value, indent=2))


def _names(parser, flag: str, value: str, allowed) -> list:
  names = [a for a in value.split(",") if a]
  if not names or any(a not in allowed for a in names):
    parser.error(f"{flag}: expected names from {','.join(allowed)}, got {value!r}")
  return names


def parse_args(argv: list):
  parser = cli.ArgumentParser(
      prog="tools/region_study.py", description=__doc__.split("\n\n")[0],
      epilog="Every other argument is --config FILE.py or --config.KEY=VALUE, as for "
             "python -m visregion_jax.train.")
  parser.add_argument("--workdir", required=True, help="where the arms train (resumable)")
  parser.add_argument("--out", required=True, help="where the tables and plots go")
  parser.add_argument("--seeds", type=int, default=3, help="independent seeds per arm (config.seed, +1, ...)")
  parser.add_argument("--arms", default=",".join(ARMS), help=f"a subset of {','.join(ARMS)}")
  parser.add_argument("--prune-k", type=int, default=6, help="prune k = 1..K layers (0: no pruning)")
  parser.add_argument("--prune-arms", default=",".join(PRUNED_ARMS),
                      help=f"the trained arms to prune, of {','.join(PRUNED_ARMS)} (those also in --arms)")
  args, config_argv = parser.parse_known_args(argv)
  args.arms = _names(parser, "--arms", args.arms, ARMS)
  args.prune_arms = [a for a in _names(parser, "--prune-arms", args.prune_arms, PRUNED_ARMS) if a in args.arms]
  if args.seeds < 1:
    parser.error(f"--seeds: expected 1 or more, got {args.seeds}")
  if args.prune_k < 0:
    parser.error(f"--prune-k: expected 0 or more, got {args.prune_k}")
  return args, config_argv


def study_config(config_argv: list, workdir: str):
  """The config with `{workdir}` paths under WORKDIR/inputs, checked for what the study reads."""
  config = load_config(config_argv + [f"--config.workdir={os.path.join(workdir, 'inputs')}"],
                       "tools/region_study.py")
  for key in ("eval_json", "text_eval_json"):
    if not config.data.get(key):
      raise VisRegionError(f"data.{key}", "expected a held-out set: the study measures it for every arm")
  if config.prune.heal_steps < 0:
    raise VisRegionError("prune.heal_steps", f"expected 0 (no healing) or more, got {config.prune.heal_steps}")
  return config


class Seed:
  """One seed's share of the study: its config, base, arms and pruned models."""

  def __init__(self, config, workdir: str, index: int):
    self.config = copy.deepcopy(config)
    self.config.seed = config.seed + index
    self.dir = os.path.join(workdir, f"seed{index}")

  def arm_config(self, arm: str):
    c = copy.deepcopy(self.config)
    c.workdir = os.path.join(self.dir, "arms", arm)
    c.region.strategy = ARMS[arm]
    c.train.export_hf = True     # pruning reads the export, as `visregion_jax.prune` does
    c.eval.at_start = False      # the base is measured once (base.json)
    c.eval.at_end = True
    if "demo" in c:
      c.demo.transformers_check = False
    return c

  def base(self) -> dict:
    path = os.path.join(self.dir, "base.json")
    saved = read_json(path)
    if saved is not None:
      return saved
    c = self.arm_config("projector")  # nothing trains: the initial model of this seed
    c.workdir = os.path.join(self.dir, "base")
    model, _ = build_model(c, c.workdir)
    tokenizer = load_tokenizer(model.config.source)
    data_config = data_config_for(c, model, tokenizer, c.model.get("vision_tower"))
    result = _measured(evaluate(c, model, tokenizer, data_config, held_out_loss=False))
    result["num_layers"] = len(model.layers)
    write_json(path, result)
    return result

  def arm(self, arm: str) -> dict:
    c = self.arm_config(arm)
    path = os.path.join(c.workdir, "study_result.json")
    saved = read_json(path)
    if saved is not None:
      log_line(f"study: seed {self.config.seed} arm {arm} finished earlier ({path})")
      return saved
    log_line(f"study: seed {self.config.seed}, training arm {arm} (region.strategy={ARMS[arm]})")
    results = loop.run(c)
    times = results["step_times_s"]
    result = {"arm": arm, "strategy": ARMS[arm], "seed": c.seed,
              "trained_layers": read_json(os.path.join(c.workdir, "region.json"))["region_layers"],
              "trainable_params": results["trainable_params"], "optimizer_bytes": results["optimizer_bytes"],
              # A resumed arm timed fewer steps; the first step of a process compiles.
              "step_time_s": statistics.median(times[1:] or times) if times else None,
              **_measured(results["after"]), "benchmarks": results.get("benchmarks") or {}}
    write_json(path, result)
    return result

  def prune(self, arm: str, max_k: int, keep: tuple) -> dict:
    """Scores of the arm's trained model and its measurements with k = 1..max_k layers
    removed, and healed where prune.heal_steps > 0. The model is loaded only when a
    piece is missing: a finished seed reads back without its arm's export."""
    c = self.arm_config(arm)
    out = os.path.join(self.dir, "prune", arm)
    loaded = functools.cache(functools.partial(_Trained, c, os.path.join(c.workdir, "hf")))
    scores = self._piece(os.path.join(out, "scores.json"), lambda: {
        "metric": c.prune.metric, "protected": list(keep), "scores": loaded().scores(arm)})
    unpruned = self._piece(os.path.join(out, "k0.json"), lambda: loaded().latency(loaded().model))
    ks = {}
    for k in range(1, max_k + 1):
      removed = prune.layers_to_remove(scores["scores"], k, keep)
      ks[str(k)] = {"removed": list(removed), "pruned": self._piece(
          os.path.join(out, f"k{k}.json"), functools.partial(self._pruned, loaded, removed, arm, k))}
      if c.prune.heal_steps:
        ks[str(k)]["healed"] = self._piece(os.path.join(out, f"k{k}-healed.json"), functools.partial(
            self._healed, c, loaded, removed, os.path.join(out, f"k{k}"), arm, k))
    return {**scores, "unpruned": unpruned, "k": ks}

  @staticmethod
  def _piece(path: str, compute) -> dict:
    saved = read_json(path)
    if saved is None:
      saved = compute()
      write_json(path, saved)
    return saved

  def _pruned(self, loaded, removed, arm: str, k: int) -> dict:
    log_line(f"study: seed {self.config.seed}, {arm}-trained model, k={k}, removing {list(removed)}")
    trained = loaded()
    pruned = prune.drop_layers(trained.model, removed)
    return {**trained.measure(pruned), **trained.latency(pruned)}

  def _healed(self, c, loaded, removed, out: str, arm: str, k: int) -> dict:
    """Exports the pruned model, heals it (resuming an interrupted healing) and measures it."""
    trained = loaded()
    pruned_dir = os.path.join(out, "pruned")
    if not os.path.isdir(pruned_dir):
      to_hf(prune.drop_layers(trained.model, removed), pruned_dir)
    region_layers = read_json(os.path.join(c.workdir, "region.json"))["region_layers"]
    layers = heal_layers(c.prune.heal_layers, region_layers, removed, len(trained.model.layers))
    log_line(f"study: seed {c.seed}, healing the {arm}-trained model at k={k}: layers {list(layers)}, "
             f"{c.prune.heal_steps} steps")
    done = heal(c, os.path.join(out, "heal"), layers, pruned_dir, isinstance(trained.model, LVLM))
    healed = load_model(done["hf_dir"], dtype=c.model.get("dtype") or None)
    return {**trained.measure(healed), **trained.latency(healed), "heal_layers": list(layers),
            "heal_seconds": done["seconds"], "heal_train_seconds": done["train_seconds"]}


class _Trained:
  """A trained arm's export with what pruning measures it on: calibration batches
  (the scores; the first one also times every forward pass) and the held-out sets."""

  def __init__(self, config, hf_dir: str):
    self.config = config
    self.model = load_model(hf_dir, dtype=config.model.get("dtype") or None)
    self.tokenizer = load_tokenizer(self.model.config.source)
    self.data_config = data_config_for(config, self.model, self.tokenizer, hf_dir)
    self.source = prune_job.calibration_source(config)
    self.latency_batch = next(self.batches())

  def batches(self):
    c = self.config
    return calibration_batches(self.source, self.tokenizer, self.data_config, c.prune.calibration_samples,
                               c.prune.batch_size, c.seed)

  def scores(self, arm: str) -> list:
    log_line(f"study: seed {self.config.seed}, scoring the layers of the {arm}-trained model")
    return [float(s) for s in prune.layer_scores(self.model, self.batches(), metric=self.config.prune.metric,
                                                 tokens=self.config.prune.tokens)]

  def measure(self, model) -> dict:
    return _measured(evaluate(self.config, model, self.tokenizer, self.data_config, held_out_loss=False))

  def latency(self, model) -> dict:
    return _latency(model, self.latency_batch, self.config.prune.latency_runs)


def _measured(result: dict) -> dict:
  return {key: result.get(key) for key in MEASURED}


def _latency(model, batch, runs: int) -> dict:
  summary = time_models({"model": model}, batch, runs)["models"]["model"]
  return {"forward_latency_s": summary["median_s"],
          "num_params": int(sum(x.size for x in model_params(model).values()))}


def run(argv: list) -> dict:
  args, config_argv = parse_args(argv)
  workdir = os.path.abspath(args.workdir)
  config = study_config(config_argv, workdir)
  hook = load_hook(config.get("hook", ""))
  if hook:  # the demo config writes its data and pretrains its tower first, once for all seeds
    hook.prepare(config, log_line)
  seeds = [Seed(config, workdir, i) for i in range(args.seeds)]
  bases = [s.base() for s in seeds]
  num_layers = bases[0]["num_layers"]
  keep = region.select_layers(num_layers, config.region.fraction, "uniform")
  if args.prune_k > num_layers - len(keep):
    raise VisRegionError("--prune-k", f"expected at most {num_layers - len(keep)} (the layers outside the "
                         f"uniform region of {num_layers}), got {args.prune_k}")
  arms = {arm: [s.arm(arm) for s in seeds] for arm in args.arms}
  pruned = {arm: [s.prune(arm, args.prune_k, keep) for s in seeds] for arm in args.prune_arms} \
      if args.prune_k else {}
  command = " ".join(["tools/region_study.py"] + list(argv))
  out = os.path.abspath(args.out)
  results = write_report(out, command, config, bases, arms, pruned)
  log_line(f"study: wrote {os.path.join(out, 'study.md')}")
  return results


def main(argv=None) -> int:
  return cli.run_main(lambda: run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
  sys.exit(main())
