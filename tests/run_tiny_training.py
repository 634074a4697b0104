"""One training run in a fresh process, for tests/test_train_distributed.py.

The CPU device count (XLA_FLAGS) and `jax.distributed` are fixed when JAX starts, so a
test that compares meshes, processes or a killed run starts this script as a
subprocess. It trains with `visregion_jax.train.loop.run` and writes the final parameters
(gathered to process 0) as a .npz keyed by their NNX path. A multi-process run is
launched as a user would by hand: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID in the environment.

  python tests/run_tiny_training.py --params-out OUT.npz [--initial-params-out INIT.npz]
      [--stall-after-step N] [--hang-before-commit N --marker FILE]
      [--signal-after-step N --signal TERM|INT [--signal-count K]]
      -- --config FILE --config.KEY=VALUE ...
  python tests/run_tiny_training.py --prune [--stall-after-step N --marker FILE] -- ...

--prune runs the prune command's job instead (`visregion_jax.prune.job.run`), whose
healing trains through the same loop, so the options below act on healing's steps;
it writes no .npz (the healed model is the job's WORKDIR/prune/hf).

--stall-after-step and --hang-before-commit make the run stop making progress at a
known point (after the metrics line of step N; inside orbax's commit of checkpoint N,
before its temporary directory is renamed) so a test can SIGKILL it there
deterministically instead of racing a few-millisecond window. --signal-after-step
sends the process itself SIGTERM or SIGINT (K times) right after the metrics line of
step N, as a scheduler or a user would mid-run; the run then goes through the
command's exit path (`cli.run_main`), so its exit status is the documented one.
"""

import argparse
import faulthandler
import os
import sys
import time

STALL_SECONDS = 600  # outlasts the test's wait; bounds an orphan if the test itself dies
WATCHDOG_SECONDS = 240  # a test run takes under 2 minutes even on a loaded CI machine


def parse_args(argv):
  parser = argparse.ArgumentParser()
  parser.add_argument("--params-out", default="")
  parser.add_argument("--prune", action="store_true")
  parser.add_argument("--initial-params-out", default="")
  parser.add_argument("--stall-after-step", type=int, default=0)
  parser.add_argument("--hang-before-commit", type=int, default=0)
  parser.add_argument("--marker", default="")
  parser.add_argument("--signal-after-step", type=int, default=0)
  parser.add_argument("--signal", choices=("TERM", "INT"), default="TERM")
  parser.add_argument("--signal-count", type=int, default=1)
  parser.add_argument("config_args", nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  if not (args.prune or args.params_out):
    parser.error("--params-out is required (without --prune)")
  if args.config_args[:1] == ["--"]:
    args.config_args = args.config_args[1:]
  return args


def touch(path: str) -> None:
  if path:
    with open(path, "w", encoding="utf-8") as f:
      f.write(str(os.getpid()))


def gathered_params(model) -> dict:
  """{NNX path: numpy array} of every nnx.Param, whole arrays even when sharded over processes."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  flat = {}
  for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    array = value.get_value()
    if jax.process_count() > 1 and isinstance(array, jax.Array) and not array.is_fully_addressable:
      array = multihost_utils.process_allgather(array, tiled=True)
    flat["/".join(str(p) for p in path)] = np.asarray(array)
  return flat


def save_params(path: str, model) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  flat = gathered_params(model)
  if jax.process_index() == 0:
    np.savez(path, **flat)


def install_initial_params_dump(train, path: str) -> None:
  """Saves the parameters as built, before any step, so a test can tell that training
  moved them (a comparison of two runs that both did nothing would pass)."""
  build_model = train.build_model

  def dumping_build_model(*args, **kwargs):
    model, plan = build_model(*args, **kwargs)
    save_params(path, model)
    return model, plan

  train.build_model = dumping_build_model


def install_stall_after_step(train, step: int, marker: str) -> None:
  """After the metrics line of `step` is written, the main thread sleeps (the async
  checkpoint thread keeps going), so the test kills a run with logged-but-uncheckpointed
  steps."""
  record = train.Progress.record

  def stalling_record(self, metrics, line=""):
    record(self, metrics, line)
    if metrics.get("step") == step and "loss" in metrics:
      touch(marker)
      time.sleep(STALL_SECONDS)

  train.Progress.record = stalling_record


def install_signal_after_step(train, step: int, name: str, count: int) -> None:
  import signal  # pylint: disable=import-outside-toplevel
  record = train.Progress.record

  def signalling_record(self, metrics, line=""):
    record(self, metrics, line)
    if metrics.get("step") == step and "loss" in metrics:
      for _ in range(count):
        os.kill(os.getpid(), getattr(signal, f"SIG{name}"))

  train.Progress.record = signalling_record


def install_hang_before_commit(step: int, marker: str) -> None:
  """Orbax writes checkpoint `step` into `<step>.orbax-checkpoint-tmp` and then hangs
  where it would mark it complete and rename it: the state a kill mid-write leaves."""
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=import-outside-toplevel

  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def hanging_finalize(self):
    if self.get_final().name == str(step):
      touch(marker)
      time.sleep(STALL_SECONDS)  # blocks orbax's commit thread; training itself goes on
    await finalize(self)

  atomicity.AtomicRenameTemporaryPath.finalize = hanging_finalize


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  # A process still alive after this long (stuck in a collective, a barrier, a thread that
  # never ends, on its way out) writes every thread's stack to its log, then again each
  # period, so a test that fails on a hang shows where each process was.
  faulthandler.dump_traceback_later(WATCHDOG_SECONDS, repeat=True)
  import jax  # pylint: disable=import-outside-toplevel

  from visregion_jax import sharding  # pylint: disable=import-outside-toplevel
  from visregion_jax.train import loop as train  # pylint: disable=import-outside-toplevel
  # What train.run does first; here before the device count is printed (which starts JAX).
  sharding.maybe_initialize_distributed(False)
  from visregion_jax.config.loading import load_config  # pylint: disable=import-outside-toplevel

  if args.stall_after_step:
    install_stall_after_step(train, args.stall_after_step, args.marker)
  if args.hang_before_commit:
    install_hang_before_commit(args.hang_before_commit, args.marker)
  if args.initial_params_out:
    install_initial_params_dump(train, args.initial_params_out)
  if args.signal_after_step:
    install_signal_after_step(train, args.signal_after_step, args.signal, args.signal_count)
  print(f"processes {jax.process_count()} local_devices {jax.local_device_count()} "
        f"devices {jax.device_count()}", flush=True)
  config = load_config(args.config_args, "tests/run_tiny_training.py")
  from visregion_jax import cli  # pylint: disable=import-outside-toplevel

  def body():
    if args.prune:
      from visregion_jax.prune import job  # pylint: disable=import-outside-toplevel
      job.run(config)
    else:
      save_params(args.params_out, train.run(config)["model"])
  return cli.run_main(body)


if __name__ == "__main__":
  sys.exit(main())
