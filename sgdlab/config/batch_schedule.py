"""config.batch_size_schedule: the batch size k as a function of the epoch.

Smith, Kindermans, Ying & Le (2018, "Don't Decay the Learning Rate, Increase the Batch
Size") multiply k by the factor the lr would be divided by; Megatron and NeMo ramp k up
in pre-training. Here k is batch_size until epoch boundaries[0], then sizes[i] from
epoch boundaries[i] (0-based epochs, so boundaries=(2,) changes k after two epochs).
An empty schedule is the plain run: batch_size throughout.

What does not change with k: the train state (parameters, optimizer state, the update
count the lr schedule reads), the per-(seed, epoch) permutation of the training set, and
the lr (lr_scaling scales it for the first k only; Smith et al. keep it while k grows).
Each distinct k is its own compiled program (`sgdlab.train.run.Run.for_epoch`).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Mapping, Sequence

import ml_collections
import numpy as np

from sgdlab.errors import ConfigError

FIELD = "batch_size_schedule"


def is_scheduled(config: ml_collections.ConfigDict) -> bool:
  return bool(config.batch_size_schedule.boundaries or config.batch_size_schedule.sizes)


def epoch_batch_sizes(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """k of each epoch (config validated, batch_size a number)."""
  s = config.batch_size_schedule
  ks, starts = [int(config.batch_size), *map(int, s.sizes)], [0, *map(int, s.boundaries)]
  return tuple(ks[int(np.searchsorted(starts, e, side="right")) - 1]
               for e in range(int(config.num_epochs)))


def label(config: Mapping[str, Any]) -> str:
  """"32" for a plain run, "32>160>800" for a schedule: run names, legends, summaries.
  A config or its dict (a History's, which may predate the field)."""
  sizes = (config.get("batch_size_schedule") or {}).get("sizes") or ()
  return ">".join(str(k) for k in (config.get("batch_size"), *sizes))


def _integers(value: Any, low: int) -> bool:
  return (isinstance(value, Sequence) and not isinstance(value, (str, bytes))
          and all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= low
                  for x in value))


def validate(c: ml_collections.ConfigDict, check_k: Callable[[ml_collections.ConfigDict], None]
             ) -> None:
  """ConfigError naming the first bad field of the schedule; check_k(config at k) runs
  every check a plain k gets (devices, training set size, micro-batch, batch norm) for
  each k of the schedule, its error renamed to the schedule's field."""
  s = c.batch_size_schedule
  b, v = s.boundaries, s.sizes
  if not _integers(b, 1) or any(x >= y for x, y in zip(b, b[1:])):
    raise ConfigError(f"{FIELD}.boundaries", b,
                      "a strictly increasing sequence of epochs >= 1 (where k changes)")
  if b and b[-1] >= c.num_epochs:
    raise ConfigError(f"{FIELD}.boundaries", b,
                      f"epochs before the last one: each < num_epochs={c.num_epochs} (a "
                      f"boundary at {b[-1]} would never train at its k)")
  if not _integers(v, 1) or len(v) != len(b):
    raise ConfigError(f"{FIELD}.sizes", v,
                      f"{len(b)} integer k >= 1, one per boundary (k before the first "
                      "boundary is batch_size)")
  if not b:
    return
  if c.batch_size == "auto":
    raise ConfigError("batch_size", c.batch_size,
                      f"a number with {FIELD} (the first k of the schedule; the memory "
                      "search chooses one k, not a schedule)")
  if c.schedule.warmup_epochs > b[0]:
    raise ConfigError("schedule.warmup_epochs", c.schedule.warmup_epochs,
                      f"at most {FIELD}.boundaries[0]={b[0]} (warmup epochs are counted "
                      f"at the first k, {c.batch_size})")
  for k in v:
    at_k = copy.deepcopy(c)
    at_k.batch_size = int(k)
    try:
      check_k(at_k)
    except ConfigError as e:
      raise ConfigError(f"{FIELD}.sizes", tuple(v), f"k={k}: {e.field}={e.value!r} "
                        f"fails: {e.valid}") from None
