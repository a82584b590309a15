r"""Run an experiment: every point of its sweep, then its summary table and figures.

  python -m sgdlab.launch --config=experiments/classic_grid.py --workdir=runs/grid
  python -m sgdlab.launch --config=experiments/classic_batch_size.py \
      --config.num_epochs=3 --config.sweep.points="({'batch_size': 64},)"

Everything is validated before anything is written or compiled: a bad value prints one
line naming the field and exits with code 2. A point that diverges or crashes is
recorded in its folder and the others still run.

Running the same command again skips finished points and resumes interrupted ones from
their last checkpoint (config.checkpoint_every_epochs). Several workers can share one
workdir: each takes the points `sweep.share` gives it (--worker_index/--num_workers,
or SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, or JOB_COMPLETION_INDEX with
--num_workers), and runs a point only after claiming it (`store.claim`), so no point
runs twice at once even when two launches overlap. --multihost makes every point one
run across all processes of a multi-process job (`sgdlab.distributed`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import sys
import time
from typing import Mapping

from absl import app, flags, logging
from ml_collections import config_flags

from sgdlab import config as config_lib
from sgdlab import data, store, summary, sweep
from sgdlab.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "", "Results folder; default runs/<config file name>.")
_WORKER_INDEX = flags.DEFINE_integer(
    "worker_index", None, "This worker's index in [0, num_workers); default from "
    "SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX, else 0.")
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", None, "Workers sharing the sweep; default SLURM_ARRAY_TASK_COUNT, else 1. "
    "Required with JOB_COMPLETION_INDEX (Kubernetes indexed jobs).")
_CLAIM_TIMEOUT = flags.DEFINE_float(
    "claim_timeout", 600.0, "Seconds without a heartbeat after which another host's claim "
    "on a point is stale and may be taken over (same host: as soon as its process is gone).")
_WAIT = flags.DEFINE_bool(
    "wait", True, "At the end, wait for this worker's points that another live worker "
    "holds, taking them over if that worker dies.")
_KEEP_CHECKPOINTS = flags.DEFINE_bool(
    "keep_checkpoints", False, "Keep a finished point's checkpoints (params.npz holds its "
    "final parameters either way).")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Each run spans all processes of the job: jax.distributed."
    "initialize() detects TPU pods, SLURM, Kubernetes and MPI, or takes the three flags below.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "",
                                   "With --multihost: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "With --multihost: process count.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "With --multihost: this process's id.")

USAGE_ERROR = 2
_POLL_SECONDS = 2.0


class UsageError(ConfigError):
  """A bad flag, environment variable or workdir, named the way the user gave it."""

  def __init__(self, name: str, value, valid: str):
    ValueError.__init__(self, f"{name}={value} is invalid: {valid}")
    self.field, self.value, self.valid = name, value, valid


def fail(message: str) -> None:
  """One line on stderr and exit code 2: the contract for bad input."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(USAGE_ERROR)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a bad flag or config override is a one-line usage error."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError, OSError) as e:
    cause = e.__cause__ or e.__context__ or e
    text = str(cause).strip().splitlines()[-1] if str(cause).strip() else repr(cause)
    if isinstance(cause, (KeyError, AttributeError)):
      text = _unknown_field(argv, cause) or text
    fail(f"{text}")
  return []


def _unknown_field(argv: list[str], cause: Exception) -> str | None:
  """'--config.a.b=v is invalid: ...' for the override naming a field the config lacks."""
  found = re.search(r"'([^'\\]+)", str(cause.args[0] if cause.args else ""))
  missing = found.group(1) if found else ""
  for arg in argv[1:]:
    name, _, value = arg.partition("=")
    if name.startswith("--config.") and missing and missing in name.split(".")[1:]:
      hint = " (new sweep axes go in the config file)" if name.startswith("--config.sweep.") else ""
      return f"{name}={value} is invalid: the config has no field '{missing}'{hint}"
  return None


def default_workdir(config_path: str) -> str:
  name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  return os.path.join("runs", name or "experiment")


# ---------------------------------------------------------------------------- workers


@dataclasses.dataclass(frozen=True)
class Worker:
  index: int = 0
  count: int = 1

  def __str__(self) -> str:
    return f"{self.index}/{self.count}"


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
  if name not in environ:
    return None
  try:
    return int(environ[name])
  except ValueError:
    raise UsageError(name, repr(environ[name]), "an integer") from None


def resolve_worker(index: int | None, count: int | None,
                   environ: Mapping[str, str] = os.environ) -> Worker:
  """Flags first, then a SLURM array, then a Kubernetes indexed job, else 0 of 1."""
  source = "--worker_index"
  if index is None and "SLURM_ARRAY_TASK_ID" in environ:
    # Array ids need not start at 0 (--array=1-8, --array=0-15:2): number them 0.. n-1.
    task, first = _env_int(environ, "SLURM_ARRAY_TASK_ID"), _env_int(environ,
                                                                    "SLURM_ARRAY_TASK_MIN")
    step = _env_int(environ, "SLURM_ARRAY_TASK_STEP") or 1
    index, source = (task - (first or 0)) // step, "SLURM_ARRAY_TASK_ID"
    if count is None:
      count = _env_int(environ, "SLURM_ARRAY_TASK_COUNT")
      if count is None:
        raise UsageError("SLURM_ARRAY_TASK_COUNT", "<unset>",
                         "set with SLURM_ARRAY_TASK_ID, or pass --num_workers")
  elif index is None and "JOB_COMPLETION_INDEX" in environ:
    index, source = _env_int(environ, "JOB_COMPLETION_INDEX"), "JOB_COMPLETION_INDEX"
    if count is None:
      raise UsageError("--num_workers", "<unset>",
                       "required with JOB_COMPLETION_INDEX: the job's completions count")
  if count is not None and count < 1:
    raise UsageError("--num_workers", count, "an integer >= 1")
  if index is not None and count is None:
    raise UsageError("--num_workers", "<unset>", "required with --worker_index")
  worker = Worker(0 if index is None else index, 1 if count is None else count)
  if not 0 <= worker.index < worker.count:
    raise UsageError(source, worker.index, f"an index in [0, {worker.count}) "
                     f"(--num_workers={worker.count})")
  return worker


# ---------------------------------------------------------------------------- planning


def plan(config, n_devices: int | None = None) -> list[sweep.Point]:
  """Expand and validate every point up front (cheap: reads dataset headers only)."""
  from sgdlab import step  # the device count needs jax
  points = sweep.expand(config)
  n_devices = step.make_mesh().size if n_devices is None else n_devices
  for point in points:
    config_lib.validate(point.config)
    if point.config.batch_size != "auto":
      spec = data.describe(point.config.data)
      config_lib.validate(point.config, n_devices=n_devices, n_train=spec.n_train)
  return points


def check_workdir(workdir: str, points: list[sweep.Point]) -> None:
  """Refuse a workdir whose folder for some point id holds another config (read only)."""
  for point in points:
    path = os.path.join(workdir, point.id, "config.json")
    if not os.path.exists(path):
      continue
    try:
      stored = store.read_json(path)
    except (OSError, ValueError) as e:
      raise UsageError("--workdir", workdir, f"a results folder of this sweep; {path} is "
                       f"unreadable ({e})") from e
    difference = config_difference_or_none(stored, point)
    if difference:
      raise UsageError("--workdir", workdir, f"it holds a different sweep: the folder of "
                       f"point {point.id} has another config ({difference}); use a new "
                       "--workdir")


def config_difference_or_none(stored: dict, point: sweep.Point) -> str | None:
  return store.config_difference(stored, config_lib.to_dict(point.config))


def prepare_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write-test-{os.getpid()}")
    with open(probe, "w"):
      pass
    os.unlink(probe)
  except OSError as e:
    raise UsageError("--workdir", workdir, f"not a writable folder ({e.strerror})") from e


# ---------------------------------------------------------------------------- running


class Progress:
  """'point i/N (worker w/n)' lines with an ETA from the points trained so far."""

  def __init__(self, total: int, share: int, worker: Worker):
    self.total, self.left, self.worker = total, share, worker
    self.trained, self.seconds = 0, 0.0

  def prefix(self, point: sweep.Point) -> str:
    return f"point {point.index + 1}/{self.total} (worker {self.worker})"

  def settled(self, seconds: float | None = None) -> str:
    """One of this worker's points is settled; seconds if it was trained here."""
    self.left = max(self.left - 1, 0)
    if seconds is not None:
      self.trained += 1
      self.seconds += seconds
    if not self.trained:
      return f"{self.left} left"
    eta = self.seconds / self.trained * self.left
    return f"{self.left} left, ETA {_duration(eta)}"


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclasses.dataclass
class Context:
  """What running points needs besides the points (one per launch)."""

  workdir: str
  worker: Worker
  owner: store.Owner
  progress: Progress
  stale_after: float = 600.0
  keep_checkpoints: bool = False
  datasets: dict = dataclasses.field(default_factory=dict)
  writer: bool = True  # process 0: claims points and writes files
  failed: list = dataclasses.field(default_factory=list)  # (point id, error)
  held: list = dataclasses.field(default_factory=list)  # points another worker holds


# Outcomes of run_point.
SKIPPED, HELD, TRAINED = "skipped", "held", "trained"


def run_points(points: list[sweep.Point], ctx: Context) -> None:
  """Run each point in turn; with config.population, compatible points train as one."""
  from sgdlab import population
  for group in population.group(points):
    if len(group) == 1:
      run_point(group[0], ctx)
    else:
      run_group(group, ctx)


def run_point(point: sweep.Point, ctx: Context) -> str:
  """Claim, train and store one point; SKIPPED when finished, HELD when claimed elsewhere."""
  decision, claim = _claim(point, ctx)
  if decision != TRAINED:
    return decision
  try:
    _train_point(point, os.path.join(ctx.workdir, point.id), ctx.progress.prefix(point), ctx)
  finally:
    if claim is not None:
      claim.release()
  return decision


def run_group(points: list[sweep.Point], ctx: Context) -> None:
  """Claim what it can of a population group; train those members as one program."""
  taken = []
  try:
    for point in points:
      decision, claim = _claim(point, ctx)
      if decision == TRAINED:
        taken.append((point, claim))
    if len(taken) == 1:
      point = taken[0][0]
      _train_point(point, os.path.join(ctx.workdir, point.id), ctx.progress.prefix(point), ctx)
    elif taken:
      _train_population([p for p, _ in taken], ctx)
  finally:
    for _, claim in taken:
      if claim is not None:
        claim.release()


def _claim(point: sweep.Point, ctx: Context):
  """(decision, claim): SKIPPED when finished, HELD when claimed elsewhere, else TRAINED."""
  from sgdlab import distributed
  point_dir = os.path.join(ctx.workdir, point.id)
  prefix = ctx.progress.prefix(point)
  claim, decision = None, SKIPPED
  if ctx.writer:
    state = store.status(point_dir)["status"]
    if state not in store.FINISHED:
      got = store.claim(ctx.workdir, point.id, ctx.owner, stale_after=ctx.stale_after)
      if isinstance(got, store.Holder):
        decision = HELD
        logging.info("%s %s: held by %s; later", prefix, point.id, got.describe())
      elif store.status(point_dir)["status"] in store.FINISHED:  # finished meanwhile
        got.release()
        state = store.status(point_dir)["status"]
      else:
        claim, decision = got, TRAINED
    if decision == SKIPPED:
      logging.info("%s %s: already %s, skipped (%s)", prefix, point.id, state,
                   ctx.progress.settled())
  decision = (SKIPPED, HELD, TRAINED)[distributed.broadcast_int(
      (SKIPPED, HELD, TRAINED).index(decision))]
  if decision == HELD:
    ctx.held.append(point)
  return decision, claim


def _train_population(points: list[sweep.Point], ctx: Context) -> None:
  """`_train_point` for a population: one program, each member's files in its own folder."""
  from sgdlab import population
  who = dict(worker=str(ctx.worker), host=ctx.owner.host, pid=ctx.owner.pid)
  dirs = [os.path.join(ctx.workdir, p.id) for p in points]
  logging.info("points %s: training as one population", ", ".join(p.id for p in points))
  start = time.perf_counter()
  if ctx.writer:
    for point, point_dir in zip(points, dirs):
      os.makedirs(point_dir, exist_ok=True)
      store.write_json(os.path.join(point_dir, "config.json"),
                       config_lib.to_dict(point.config))
      store.set_status(point_dir, "running", **who)
  try:
    key = repr(points[0].config.data.to_dict())
    if key not in ctx.datasets:
      ctx.datasets.clear()  # keep one dataset in memory
      ctx.datasets[key] = data.load(points[0].config.data)
    histories = population.train_population([p.config for p in points],
                                            dataset=ctx.datasets[key])
    outcomes = []
    for point_dir, history in zip(dirs, histories):
      if ctx.writer:
        store.save_run(point_dir, history, **who)
      outcomes.append("diverged" if history.diverged else "done")
  except Exception as e:  # a crashing population must not end the sweep
    logging.exception("population %s failed", [p.id for p in points])
    error = f"{type(e).__name__}: {e}"
    outcomes = ["failed"] * len(points)
    for point, point_dir in zip(points, dirs):
      if ctx.writer:
        store.set_status(point_dir, "failed", error=error, **who)
      ctx.failed.append((point.id, error))
  seconds = (time.perf_counter() - start) / len(points)
  for point, outcome in zip(points, outcomes):
    logging.info("%s %s: %s (population of %d); %s", ctx.progress.prefix(point), point.id,
                 outcome, len(points), ctx.progress.settled(seconds))


def _train_point(point: sweep.Point, point_dir: str, prefix: str, ctx: Context) -> None:
  from sgdlab import trainer  # jax compiles only once the plan is valid
  name = config_lib.run_name(point.config)
  who = dict(worker=str(ctx.worker), host=ctx.owner.host, pid=ctx.owner.pid)
  logging.info("%s %s: training %s", prefix, point.id, name)
  start = time.perf_counter()
  if ctx.writer:
    os.makedirs(point_dir, exist_ok=True)
    store.write_json(os.path.join(point_dir, "config.json"), config_lib.to_dict(point.config))
    store.set_status(point_dir, "running", **who)
  try:
    key = repr(point.config.data.to_dict())
    if key not in ctx.datasets:
      ctx.datasets.clear()  # keep one dataset in memory
      ctx.datasets[key] = data.load(point.config.data)
    history = trainer.train(point.config, dataset=ctx.datasets[key],
                            checkpoint_dir=os.path.join(point_dir, "checkpoints"))
    if ctx.writer:
      store.save_run(point_dir, history, **who)
      if not ctx.keep_checkpoints:
        shutil.rmtree(os.path.join(point_dir, "checkpoints"), ignore_errors=True)
    outcome = "diverged" if history.diverged else "done"
  except Exception as e:  # a crashing point must not end the sweep
    logging.exception("%s %s failed", prefix, point.id)
    error = f"{type(e).__name__}: {e}"
    if ctx.writer:
      store.set_status(point_dir, "failed", error=error, **who)
    ctx.failed.append((point.id, error))
    outcome = "failed"
  seconds = time.perf_counter() - start
  logging.info("%s %s: %s in %s; %s", prefix, point.id, outcome, _duration(seconds),
               ctx.progress.settled(seconds))


def wait_for_held(ctx: Context) -> None:
  """Until every held point is settled, or its holder dies and this worker takes it over."""
  last_note = 0.0
  while ctx.held:
    pending, ctx.held = ctx.held, []
    for point in pending:
      holder = store.holder(ctx.workdir, point.id)
      if holder is not None and not store.is_stale(holder, ctx.stale_after):
        ctx.held.append(point)
        continue
      state = store.status(os.path.join(ctx.workdir, point.id))["status"]
      if holder is None and state in ("done", "diverged", "failed"):
        logging.info("%s %s: %s by another worker (%s)", ctx.progress.prefix(point), point.id,
                     state, ctx.progress.settled())
        continue
      run_point(point, ctx)  # its holder is gone: resume it here (or find a new holder)
    if ctx.held:
      if time.monotonic() - last_note > 60:
        last_note = time.monotonic()
        logging.info("waiting for %d point(s) held by other workers: %s", len(ctx.held),
                     ", ".join(p.id for p in ctx.held))
      time.sleep(_POLL_SECONDS)


def run(config, workdir: str, worker: Worker = Worker(), *, stale_after: float = 600.0,
        wait: bool = True, keep_checkpoints: bool = False) -> int:
  """Run this worker's points not already finished; returns the number that failed."""
  from sgdlab import distributed
  points = plan(config)
  mine = sweep.share(points, worker.index, worker.count)
  check_workdir(workdir, points)
  writer = distributed.is_writer()
  if writer:
    prepare_workdir(workdir)
  logging.info("sweep of %d points; worker %s runs %d of them in %s", len(points), worker,
               len(mine), workdir)
  ctx = Context(workdir=workdir, worker=worker, owner=store.Owner(worker=str(worker)),
                progress=Progress(len(points), len(mine), worker), stale_after=stale_after,
                keep_checkpoints=keep_checkpoints, writer=writer)
  run_points(mine, ctx)
  if ctx.held and wait and writer and distributed.current().process_count == 1:
    wait_for_held(ctx)
  elif ctx.held:
    logging.info("left to their holders: %s", ", ".join(p.id for p in ctx.held))
  if writer:
    text = summary.rebuild(workdir, title=os.path.basename(os.path.abspath(workdir)))
    print(text)
    logging.info("summary: %s", os.path.join(workdir, "summary.md"))
  return len(ctx.failed)


def _terminate(signum, frame):  # noqa: ARG001
  """SIGTERM (preemption, scancel) unwinds like Ctrl-C: claims are released on the way."""
  raise SystemExit(128 + signum)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}; use --config.field=value")
  if _CONFIG.value is None:
    fail("--config is required, e.g. --config=experiments/classic_grid.py")
  workdir = _WORKDIR.value or default_workdir(
      config_flags.get_config_filename(flags.FLAGS["config"]))
  try:
    worker = resolve_worker(_WORKER_INDEX.value, _NUM_WORKERS.value)
    if _CLAIM_TIMEOUT.value <= 0:
      raise UsageError("--claim_timeout", _CLAIM_TIMEOUT.value, "a number of seconds > 0")
  except ConfigError as e:
    fail(str(e))
  if _MULTIHOST.value:
    from sgdlab import distributed
    distributed.initialize(coordinator_address=_COORDINATOR.value,
                           num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  signal.signal(signal.SIGTERM, _terminate)
  try:
    failures = run(_CONFIG.value, workdir, worker, stale_after=_CLAIM_TIMEOUT.value,
                   wait=_WAIT.value, keep_checkpoints=_KEEP_CHECKPOINTS.value)
  except ConfigError as e:
    fail(str(e))
  sys.exit(1 if failures else 0)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
