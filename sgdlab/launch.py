r"""Run an experiment: every point of its sweep, then its summary table and figures.

  python -m sgdlab.launch --config=experiments/classic_batch_size.py --workdir=runs/classic
  python -m sgdlab.launch --config=experiments/classic_grid.py --config.num_epochs=3
  python -m sgdlab.launch --config=experiments/classic_grid.py --submit=slurm --num_workers=8

Everything is validated before anything is written or compiled (`sgdlab.sweep.runner`):
a bad value prints one line naming the field and exits with code 2. Running the same
command again skips finished points and resumes interrupted ones. Workers share one
workdir: --worker_index/--num_workers, or a SLURM array, or a Kubernetes indexed job
with --num_workers. --multihost makes every point one run across all processes.
--submit=slurm submits those workers as a SLURM job array through submitit (--submit=local:
local processes, waited for); the same command again finishes what preemption left
(`sgdlab.sweep.submit`).
"""

from __future__ import annotations

import signal
import sys

from absl import flags

from sgdlab import cli
from sgdlab.errors import UsageError
from sgdlab.sweep import runner, submit, workers

cli.define_config_flags()
submit.define_flags()
_WORKER_INDEX = flags.DEFINE_integer(
    "worker_index", None, "This worker's index in [0, num_workers); default from "
    "SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX, else 0.")
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", None, "Workers sharing the sweep; default SLURM_ARRAY_TASK_COUNT, else 1. "
    "Required with JOB_COMPLETION_INDEX (Kubernetes indexed jobs).")
_CLAIM_TIMEOUT = flags.DEFINE_float(
    "claim_timeout", 600.0, "Seconds without a heartbeat after which another host's claim "
    "on a point is stale and may be taken over (same host: as soon as its process is gone).")
_WAIT = flags.DEFINE_bool("wait", True, "At the end, wait for this worker's points that "
                          "another live worker holds, taking them over if that worker dies.")
_KEEP_CHECKPOINTS = flags.DEFINE_bool("keep_checkpoints", False,
                                      "Keep a finished point's checkpoints.")
_TENSORBOARD_DIR = flags.DEFINE_string("tensorboard_dir", None, "TensorBoard events, a folder "
                                       "per point; default <workdir>/tensorboard, empty: none.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Each run spans all processes of the job: jax.distributed."
    "initialize() detects TPU pods, SLURM, Kubernetes and MPI, or takes the three flags below.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "",
                                   "With --multihost: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "With --multihost: process count.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "With --multihost: this process's id.")


def _terminate(signum, frame):  # noqa: ARG001
  """SIGTERM (preemption, scancel) unwinds like Ctrl-C: claims are released on the way."""
  raise SystemExit(128 + signum)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}; use --config.field=value")
  config = cli.config()

  def options() -> runner.Options:
    if _CLAIM_TIMEOUT.value <= 0:
      raise UsageError("--claim_timeout", _CLAIM_TIMEOUT.value, "a number of seconds > 0")
    return runner.Options(cli.workdir(),
                          workers.resolve_worker(_WORKER_INDEX.value, _NUM_WORKERS.value),
                          stale_after=_CLAIM_TIMEOUT.value, wait=_WAIT.value,
                          keep_checkpoints=_KEEP_CHECKPOINTS.value,
                          tensorboard_dir=_TENSORBOARD_DIR.value)

  if flags.FLAGS.submit:  # the workers run as submitit jobs instead
    sys.exit(cli.call(lambda: submit.submit(config, submit.request_from_flags(), options,
                                            overrides=cli.overrides())))
  opts = cli.call(options)
  if _MULTIHOST.value:
    from sgdlab.sweep import hosts  # pylint: disable=g-import-not-at-top
    hosts.initialize(coordinator_address=_COORDINATOR.value,
                     num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  signal.signal(signal.SIGTERM, _terminate)
  failures = cli.call(lambda: runner.run_sweep(config, opts, overrides=cli.overrides()))
  sys.exit(1 if failures else 0)


if __name__ == "__main__":
  cli.main(main)
