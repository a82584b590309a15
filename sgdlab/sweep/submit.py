"""Submit a sweep through submitit: one job per worker, a SLURM array or local processes.

  python -m sgdlab.launch --config=... --submit=slurm --slurm_partition=gpu --num_workers=8

The submitting process plans the sweep first (`runner.resolve_points`, `runner.check_workdir`), so
bad input is one line and exit code 2 before anything is submitted or written. Then job
i of N is worker i/N of the claim protocol (`sgdlab.sweep.claims`): resubmitting the same
command after preemption or a crash skips finished points and resumes interrupted ones.

Each job calls `runner.run_sweep` in its own process rather than re-running the launch command
line (`submitit.helpers.CommandFunction`), for two reasons:
- What runs is what was validated: the resolved ConfigDict (overrides applied) is pickled
  at submission, so a config file edited while the array waits in the queue cannot give
  the tasks different sweeps.
- Preemption unwinds the worker itself: submitit's signal handler runs in the process
  that holds the claims, so its requeue (SystemExit) releases them on the way out. A
  child command would get the job's signals too and, not handling the preemption one,
  die with its claims left to go stale.
SIGTERM is left to submitit, which ignores it: Slurm sends it ahead of the preemption
signal, and exiting on it would skip the requeue. The submitter validates with its own
devices; each job plans again with the devices it runs on.

With --multihost, a job is --submit_nodes x --submit_tasks_per_node processes that
train as one run across hosts (a GPU cluster's ResNet-50 at k=8192): each task joins
the others (`jax.distributed`, task 0's node coordinating, `JobEnvironment`'s rank and
count) before the sweep, and only process 0 claims and writes (`sgdlab.sweep.hosts`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from typing import Any, Callable, Mapping, Sequence

import ml_collections
from absl import flags

from sgdlab.errors import UsageError
from sgdlab.sweep import runner
from sgdlab.sweep.workers import Worker

KINDS = ("slurm", "local")
_SET_BY_SUBMITIT = ("array", "output", "error", "signal", "open-mode")


@dataclasses.dataclass(frozen=True)
class Request:
  """How to submit: the executor, the worker count and each task's resources."""

  kind: str  # "slurm" or "local"
  num_workers: int | None = None  # default 1
  folder: str = ""  # submitit's logs and pickles; default <workdir>/submitit
  time_min: int = 240  # per task; one that runs out is requeued (3 times at most) and resumes
  gpus_per_task: int | None = None
  cpus_per_task: int | None = None
  partition: str = ""
  array_parallelism: int | None = None
  sbatch: Sequence[str] = ()  # extra sbatch parameters, "key=value"
  wait: bool = False  # slurm: wait for the jobs (local always waits)
  worker_index: int | None = None  # refused: each job's index is its array index
  multihost: bool = False  # each job's processes are one run across hosts
  nodes: int = 1  # per job (slurm)
  tasks_per_node: int = 1  # processes per node, each with gpus_per_task GPUs

  @property
  def processes(self) -> int:
    return self.nodes * self.tasks_per_node


def define_flags() -> None:
  """The --submit, --submit_* and --slurm_* flags of `sgdlab.launch`, once per process."""
  if "submit" in flags.FLAGS:
    return
  flags.DEFINE_string("submit", "", "slurm or local: run the workers as submitit jobs, job "
                      "i of --num_workers being worker i (sgdlab.sweep.submit).")
  flags.DEFINE_string("submit_folder", "", "With --submit: submitit's job logs and pickles; "
                      "default <workdir>/submitit.")
  flags.DEFINE_integer("submit_time", 240, "With --submit: minutes per job; one that runs "
                       "out is requeued and resumes.")
  flags.DEFINE_integer("submit_gpus_per_task", None, "With --submit: GPUs per job (local "
                       "jobs see only these; none by default).")
  flags.DEFINE_integer("submit_cpus_per_task", None, "With --submit: CPUs per job.")
  flags.DEFINE_bool("submit_wait", False, "With --submit=slurm: wait for the jobs and exit 1 "
                    "if one failed (--submit=local always waits).")
  flags.DEFINE_integer("submit_nodes", 1, "With --submit and --multihost: nodes per job.")
  flags.DEFINE_integer("submit_tasks_per_node", 1, "With --submit and --multihost: "
                       "processes per node; a job's processes train as one run.")
  flags.DEFINE_string("slurm_partition", "", "With --submit=slurm: the partition.")
  flags.DEFINE_integer("slurm_array_parallelism", None, "With --submit=slurm: at most this "
                       "many jobs at once.")
  flags.DEFINE_multi_string("slurm_sbatch", [], "With --submit=slurm: another sbatch "
                            "parameter, key=value (repeatable), e.g. account=abc, mem=64G.")


def request_from_flags() -> Request:
  """The Request the command line asks for (after define_flags and parsing)."""
  f = flags.FLAGS
  return Request(f.submit, f.get_flag_value("num_workers", None), folder=f.submit_folder,
                 time_min=f.submit_time, gpus_per_task=f.submit_gpus_per_task,
                 cpus_per_task=f.submit_cpus_per_task, partition=f.slurm_partition,
                 array_parallelism=f.slurm_array_parallelism, sbatch=tuple(f.slurm_sbatch),
                 wait=f.submit_wait, worker_index=f.get_flag_value("worker_index", None),
                 multihost=f.get_flag_value("multihost", False), nodes=f.submit_nodes,
                 tasks_per_node=f.submit_tasks_per_node)


def check(request: Request) -> None:
  """UsageError for any submit flag that cannot work; reads and writes nothing."""
  if request.kind not in KINDS:
    raise UsageError("--submit", request.kind, f"one of {', '.join(KINDS)}")
  if request.worker_index is not None:
    raise UsageError("--worker_index", request.worker_index, "not with --submit: job i of "
                     "--num_workers is worker i")
  count = 1 if request.num_workers is None else request.num_workers
  for name, value, low in (("--num_workers", count, 1), ("--submit_time", request.time_min, 1),
                           ("--submit_nodes", request.nodes, 1),
                           ("--submit_tasks_per_node", request.tasks_per_node, 1),
                           ("--submit_gpus_per_task", request.gpus_per_task, 0),
                           ("--submit_cpus_per_task", request.cpus_per_task, 1),
                           ("--slurm_array_parallelism", request.array_parallelism, 1)):
    if value is not None and value < low:
      raise UsageError(name, value, f"an integer >= {low}")
  if request.multihost != (request.processes > 1):
    raise UsageError("--multihost", request.multihost, "with --submit, together with "
                     "--submit_nodes or --submit_tasks_per_node above 1 (a job's processes "
                     "are one run), or neither")
  if request.kind == "local" and request.nodes > 1:
    raise UsageError("--submit_nodes", request.nodes, "1 for --submit=local (one machine)")
  sbatch_parameters(request.sbatch)
  try:
    import submitit  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UsageError("--submit", request.kind, "submitit is not installed (pip install "
                     "'sgdlab[slurm]')") from None
  if request.kind == "slurm" and submitit.SlurmExecutor.affinity() <= 0:
    raise UsageError("--submit", request.kind, "no SLURM here (srun not found); "
                     "--submit=local runs the jobs on this machine")


def sbatch_parameters(entries: Sequence[str]) -> dict[str, str]:
  """--slurm_sbatch=key=value entries as submitit's additional_parameters."""
  out = {}
  for entry in entries:
    key, sep, value = entry.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
      raise UsageError("--slurm_sbatch", entry, "key=value, e.g. --slurm_sbatch=account=abc")
    if key.replace("_", "-") in _SET_BY_SUBMITIT:
      raise UsageError("--slurm_sbatch", entry, f"a parameter other than {key}, which "
                       "submitit sets itself")
    out[key] = value
  return out


class Task:
  """One job: worker i/N of the sweep, run in the job's process.

  On its preemption signal submitit requeues the job; on a timeout only if the callable
  has a `checkpoint` method returning what to run next (the protocol of
  `submitit.helpers.Checkpointable`, written out so that this module imports without
  submitit). The task has no state worth saving, its progress is on disk in the claims
  and orbax checkpoints, so the next run is the same call: it skips finished points and
  resumes the interrupted one.
  """

  def __init__(self, config: ml_collections.ConfigDict, options: runner.Options,
               overrides: Mapping[str, str], coordinator_host: str | None = None):
    self.config, self.options, self.overrides = config, options, dict(overrides)
    self.coordinator_host = coordinator_host  # multihost: "" = the job's first node

  def __call__(self) -> int:
    from absl import flags, logging  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():  # not under absl's app.run: log as the launcher does
      flags.FLAGS.mark_as_parsed()
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO)
    if self.coordinator_host is not None:
      _join_job_processes(self.coordinator_host)
    return runner.run_sweep(self.config, self.options, overrides=self.overrides)

  def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
    import submitit  # pylint: disable=g-import-not-at-top
    return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _join_job_processes(host: str) -> None:
  """One multi-process JAX run of this job's tasks: task 0's node coordinates, on a port
  derived from the job id (the same after a requeue)."""
  import submitit  # pylint: disable=g-import-not-at-top
  from sgdlab.sweep import hosts  # pylint: disable=g-import-not-at-top
  env = submitit.JobEnvironment()
  port = 20000 + int(hashlib.sha1(str(env.job_id).encode()).hexdigest(), 16) % 20000
  hosts.initialize(coordinator_address=f"{host or env.hostnames[0]}:{port}",
                   num_processes=env.num_tasks, process_id=env.global_rank)


def executor(request: Request, folder: str, name: str) -> Any:
  """A submitit AutoExecutor for the request (it creates `folder`)."""
  import submitit  # pylint: disable=g-import-not-at-top
  ex = submitit.AutoExecutor(folder=folder, cluster=request.kind)
  gpus = request.gpus_per_task and request.gpus_per_task * request.tasks_per_node
  params: dict[str, Any] = dict(name=name, timeout_min=request.time_min,
                                tasks_per_node=request.tasks_per_node, gpus_per_node=gpus,
                                cpus_per_task=request.cpus_per_task)
  if request.nodes > 1:
    params["nodes"] = request.nodes
  if request.kind == "slurm":
    params.update(slurm_partition=request.partition or None,
                  slurm_array_parallelism=request.array_parallelism,
                  slurm_additional_parameters=sbatch_parameters(request.sbatch) or None)
  ex.update_parameters(**params)  # None values are left at submitit's defaults
  return ex


def submit(config: ml_collections.ConfigDict, request: Request,
           options: Callable[[], runner.Options], *,
           overrides: Mapping[str, str] | None = None) -> int:
  """Validate, plan, submit one job per worker; the exit code (after waiting, if asked).

  `options` builds this launch's runner.Options (claim timeout, ...); each job gets a
  copy with its own worker and the workdir made absolute.
  """
  check(request)
  base = options()
  from sgdlab.train import step  # pylint: disable=g-import-not-at-top
  points = runner.resolve_points(config, step.make_mesh(), overrides)
  runner.check_workdir(base.workdir, points)
  runner.prepare_outputs(base)
  workdir = os.path.abspath(base.workdir)
  folder = os.path.abspath(request.folder or os.path.join(workdir, "submitit"))
  n = request.num_workers or 1
  host = (("127.0.0.1" if request.kind == "local" else "") if request.multihost else None)
  tasks = [Task(config, dataclasses.replace(base, workdir=workdir, worker=Worker(i, n)),
                overrides or {}, host) for i in range(n)]
  jobs = executor(request, folder, f"sgdlab-{os.path.basename(workdir)}").submit_array(tasks)
  where = "SLURM" if request.kind == "slurm" else "local"
  print(f"submitted {n} {where} job(s) for the {len(points)} points of {workdir}; "
        "logs in " + folder)
  for i, job in enumerate(jobs):
    print(f"  worker {i}/{n}: job {job.job_id}, log {job.paths.stderr}")
  if request.kind == "slurm" and not request.wait:
    print("the same command again resubmits what is left (finished points are skipped)")
    return 0
  return _wait(jobs, request.kind, workdir)


def _wait(jobs: Sequence[Any], kind: str, workdir: str) -> int:
  """Wait for every job; 0 if all ran their points without a failure, else 1."""
  bad = 0
  for i, job in enumerate(jobs):
    job.wait()
    try:
      if kind == "local" and not job.paths.result_pickle.exists():  # no slow file system
        raise RuntimeError("it ended without a result (killed?)")
      failures = job.results()[0]  # task 0's: the run's writer (the others' are the same)
      outcome = "done" if not failures else f"{failures} point(s) failed"
    except Exception as e:  # pylint: disable=broad-except
      failures = 1
      outcome = f"failed: {(str(e).strip().splitlines() or [type(e).__name__])[0]}"
    bad += bool(failures)
    print(f"  worker {i}/{len(jobs)}: job {job.job_id} {outcome}; log {job.paths.stderr}")
  summary = os.path.join(workdir, "summary.md")
  if os.path.exists(summary):
    with open(summary) as f:
      print(f.read().rstrip("\n"))
  if bad:
    print(f"{bad} job(s) did not finish; the same command again finishes the sweep",
          file=sys.stderr)
  return 1 if bad else 0
