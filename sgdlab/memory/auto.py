"""batch_size="auto": the exact largest k that fits, found before anything is written."""

from __future__ import annotations

from absl import logging
from jax.sharding import Mesh

from sgdlab.config import Resolved
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
