"""The learning rate per k on a geometric grid, walked until the best lr is bracketed.

Shallue et al. (2018) tune the lr per batch size and report the fewest steps to a
target; here the grid is lr = base_lr * lr_factor**j (lr_factor sqrt(2) by default),
walked from the best j of the previous k up or down until the best lr has a worse (or
diverging) neighbour on both sides. A run may stop as soon as it needs more steps than
the best so far at its k, which is what makes the walk cheap.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import ml_collections
from absl import logging

from sgdlab.studies import steps_config

# run_lr(learning_rate, limit) -> a run's record: k, learning_rate, steps (None unless it
# reached the target within `limit` steps), status ("reached", "diverged ...", ...),
# wall_time.
RunLr = Callable[[float, int], dict[str, Any]]


def _score(run: dict[str, Any]) -> float:
  return run["steps"] if run["steps"] is not None else math.inf


def _diverged(run: dict[str, Any]) -> bool:
  return run["status"].startswith("diverged")


def next_steps(runs: dict[int, dict[str, Any]]) -> list[int]:
  """The grid index to try next given the runs so far (by index), or [] when bracketed.

  Nothing reached: one lower if every run diverged, else one higher. Otherwise one
  higher while the best is the highest tried (and did not diverge), one lower while it
  is the lowest.
  """
  js = sorted(runs)
  best_j = min(js, key=lambda i: (_score(runs[i]), i))
  if math.isinf(_score(runs[best_j])):
    return [js[0] - 1] if all(_diverged(runs[i]) for i in js) else [js[-1] + 1]
  if best_j == js[-1] and not _diverged(runs[best_j]):
    return [best_j + 1]
  if best_j == js[0]:
    return [best_j - 1]
  return []


def tune_k(run_lr: RunLr, k: int, base_lr: float, first: int,
           s: ml_collections.ConfigDict) -> tuple[list[dict[str, Any]], int | None]:
  """Walk the grid lr = base_lr * s.lr_factor**j from j = first until the best is bracketed
  (or s.max_lrs runs are spent).

  Each run's limit is the study's budget for k, or the best steps so far minus one.
  Returns the runs (by lr) and the best j, or None if no lr reached the target.
  """
  budget = steps_config.budget(s, k)
  runs: dict[int, dict[str, Any]] = {}
  queue = [first, first + 1]  # the best lr rarely falls as k grows
  while queue and len(runs) < s.max_lrs:
    j = queue.pop(0)
    if j in runs:
      continue
    best = min((_score(r) for r in runs.values()), default=math.inf)
    limit = budget if math.isinf(best) else min(budget, int(best) - 1)
    lr = base_lr * s.lr_factor ** j
    runs[j] = run_lr(lr, limit) if limit >= 1 else dict(
        k=k, learning_rate=lr, steps=None, status="skipped", wall_time=0.0)
    r = runs[j]
    logging.info("k=%d lr=%.3g: %s%s (%.1fs)", k, lr, r["status"],
                 f" at step {r['steps']}" if r["steps"] else "", r["wall_time"])
    if not queue:
      queue = next_steps(runs)
  if queue:
    logging.warning("k=%d: max_lrs=%d runs did not bracket the best lr; its steps are an "
                    "upper bound (raise steps_to_target.max_lrs)", k, s.max_lrs)
  js = sorted(runs)
  reached = [j for j in js if runs[j]["steps"] is not None]
  best_j = min(reached, key=lambda i: (_score(runs[i]), i)) if reached else None
  return [runs[j] for j in js], best_j
