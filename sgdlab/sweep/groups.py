"""Which points of a sweep train together as one population program.

A small model at small k leaves an accelerator mostly idle, and the classic sweeps
(lr = 1, 0.1, 0.01; decay on or off; a few seeds) differ only in numbers the step reads
from its state, so `sgdlab.train.train_population` trains them as one vmapped program.
Points with `config.population = True` that differ only in learning_rate, lr_decay and
seed form a group; the others, and points with batch_size="auto" (the memory estimate
is for one run, not a stack), stay alone.
"""

from __future__ import annotations

import json
from typing import Sequence

from sgdlab import config as config_lib
from sgdlab.sweep.expand import Point


def group(points: Sequence[Point], *, max_size: int | None = None) -> list[list[Point]]:
  """Points that can train as one population (at most max_size members), in sweep order."""
  if max_size is not None and max_size < 1:
    raise ValueError(f"max_size={max_size!r}: an integer >= 1, or None for no limit")
  groups: list[list[Point]] = []
  open_groups: dict[str, list[Point]] = {}
  for point in points:
    c = point.config
    if not c.get("population", False) or c.batch_size == "auto":
      groups.append([point])
      continue
    key = json.dumps(config_lib.shared_fields(c), sort_keys=True, default=str)
    members = open_groups.get(key)
    if members is None or (max_size is not None and len(members) >= max_size):
      members = open_groups[key] = []
      groups.append(members)
    members.append(point)
  return groups
