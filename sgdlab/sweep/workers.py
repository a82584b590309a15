"""Which worker this process is: flags, a SLURM array task, or a Kubernetes indexed job.

Workers split a sweep's points round-robin (`sgdlab.sweep.expand.share`) and claim
each point before running it (`sgdlab.sweep.claims`), so arrays of any size can share
one workdir, and a resubmitted array finishes what a preempted one left.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

from sgdlab.errors import UsageError


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
