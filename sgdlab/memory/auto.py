"""The "auto" fields, decided before anything is written.

batch_size="auto": the exact largest k that fits. microbatch_size="auto" (or
dtype="auto"): k stays, and the fixed-k planner picks micro-batch, remat and dtype.
"""

from __future__ import annotations

from typing import Any

from absl import logging
from jax.sharding import Mesh

from sgdlab.config import Resolved, flatten, to_dict
from sgdlab.memory import plan
from sgdlab.memory.budget import device_budget
from sgdlab.memory.search import find_batch_size


def resolve_batch_size(resolved: Resolved, mesh: Mesh) -> Resolved:
  """`resolved` with batch_size="auto" replaced by the largest k whose compiled programs
  fit config.memory_budget (unchanged when k is given). Raises ConfigError when the
  budget is unreadable or nothing fits; logs the answer and where the bytes go."""
  if not resolved.auto_batch_size:
    return resolved
  c = resolved.config
  budget = device_budget(mesh, c.memory_budget, c.memory_headroom)
  report = find_batch_size(resolved, budget, mesh=mesh)
  logging.info("batch_size=auto: k=%d (largest power of two: %d) in %.1fs\n%s",
               report.chosen, report.largest_power_of_two, report.search_seconds,
               report.table())
  return resolved.with_batch_size(report.chosen)


def resolve_plan(resolved: Resolved, mesh: Mesh) -> Resolved:
  """`resolved` with microbatch_size / dtype "auto" replaced by the fixed-k plan with the
  least predicted time that fits config.memory_budget (unchanged when both are given).
  Raises ConfigError when no plan fits; logs every plan considered."""
  if not resolved.auto_plan:
    return resolved
  c = resolved.config
  budget = device_budget(mesh, c.memory_budget, c.memory_headroom)
  report = plan.plan_microbatch(resolved, budget, mesh=mesh)
  logging.info("microbatch_size=%s, dtype=%s: planned in %.1fs\n%s", c.microbatch_size,
               c.dtype, report.search_seconds, report.table())
  return plan.apply(resolved, report)


DECIDED_FIELDS = ("batch_size", "microbatch_size", "dtype", "model.remat")


def decided_fields(resolved: Resolved) -> dict[str, Any]:
  """The fields the "auto" searches decide, as resolved holds them: what runs that share
  every other field (population members, sweep points) take over instead of searching."""
  fields = flatten(to_dict(resolved.config))
  return {name: fields[name] for name in DECIDED_FIELDS}
