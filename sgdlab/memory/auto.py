"""The "auto" fields, decided before anything is written.

batch_size="auto": the exact largest k that fits. microbatch_size="auto" (or
dtype="auto"): k stays, and the fixed-k planner picks micro-batch, remat and dtype.
"""

from __future__ import annotations

import math
from typing import Any

from absl import logging
from jax.sharding import Mesh

from sgdlab.config import Resolved, batch_schedule, flatten, to_dict
from sgdlab.errors import ConfigError
from sgdlab.memory import plan
from sgdlab.memory.budget import device_budget
from sgdlab.memory.estimator import Estimator
from sgdlab.memory.search import find_batch_size
from sgdlab.units import format_bytes


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


def resolve_schedule(resolved: Resolved, mesh: Mesh) -> Resolved:
  """A batch_size_schedule's memory, before anything runs. With microbatch_size or dtype
  "auto", the planner plans the largest k; its dtype and remat serve every k, and its
  micro-batch, reduced to a divisor of every k's per-device batch, too (no micro-step is
  then larger than the plan's). With config.memory_budget given, every k is checked
  against it. Unchanged for a plain k or a schedule with neither."""
  c = resolved.config
  if not batch_schedule.is_scheduled(c) or not (resolved.auto_plan or c.memory_budget):
    return resolved
  largest = max(resolved.phases)
  if resolved.auto_plan:
    chosen = plan.plan_microbatch(resolved.with_batch_size(largest), mesh=mesh).chosen
    fields = chosen.fields()
    if fields["microbatch_size"]:
      fields["microbatch_size"] = math.gcd(chosen.microbatch_size,
                                           *(k // mesh.size for k in resolved.phases))
    logging.info("batch_size_schedule: planned at k=%d: %s", largest, fields)
    resolved = resolved.with_fields(**fields)
  budget = device_budget(mesh, c.memory_budget, c.memory_headroom)
  for k in resolved.phases:
    total = Estimator(resolved.with_batch_size(k), mesh).total(k)
    if total > budget.usable:
      raise ConfigError(f"{batch_schedule.FIELD}.sizes", tuple(c.batch_size_schedule.sizes),
                        f"every k within memory_budget={budget.value} "
                        f"({format_bytes(budget.usable)} usable per device); k={k} needs "
                        f"{format_bytes(total)} (microbatch_size='auto' plans micro-batches)")
  return resolved


DECIDED_FIELDS = ("batch_size", "microbatch_size", "dtype", "model.remat")


def decided_fields(resolved: Resolved) -> dict[str, Any]:
  """The fields the "auto" searches decide, as resolved holds them: what runs that share
  every other field (population members, sweep points) take over instead of searching."""
  fields = flatten(to_dict(resolved.config))
  return {name: fields[name] for name in DECIDED_FIELDS}
