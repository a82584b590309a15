"""Quasi-random search: a search space and a trial count -> each trial's field overrides.

Random search beats grids when few of the fields matter (Bergstra & Bengio, 2012), and a
low-discrepancy sequence covers the space more evenly than independent draws for the
same budget; Shallue et al. (2018) and AlgoPerf tune every (workload, batch size) by a
fixed budget of quasi-random trials. The sequence here is scipy's scrambled Halton:
scipy ships with jax, Halton is balanced at any trial count (Sobol's balance needs a
power of two, and a budget of 10 or 20 trials is common), and scrambling removes the
correlations between dimensions of the plain sequence.

A search space is nested like the config; each searched field is a dict:
  dict(min=a, max=b, scale="linear" | "log" | "reverse_log"[, integer=True])
  dict(choices=(v1, v2, ...))
  linear:       a + u (b - a)
  log:          exp(log a + u (log b - log a)),             0 < a < b
  reverse_log:  1 - exp(log(1 - a) + u (log(1 - b) - log(1 - a))),   0 <= a < b < 1:
                uniform in log(1 - value), crowding toward 1, for momentum-like fields
  choices:      choices[floor(u n)]
with u in [0, 1) the trial's coordinate for that field (one dimension per field).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import ml_collections
import numpy as np
from scipy.stats import qmc

from sgdlab.config import set_field
from sgdlab.errors import ConfigError, check_number

SCALES = ("linear", "log", "reverse_log")


def _is_spec(node: Any) -> bool:
  return isinstance(node, (dict, ml_collections.ConfigDict)) and (
      "choices" in node or "scale" in node or "min" in node or "max" in node)


def fields(space: ml_collections.ConfigDict | dict, prefix: str = ""
           ) -> Iterable[tuple[str, Any]]:
  """(dotted field, its spec) of every searched field, in the space's order."""
  for key in space.keys():
    node = space[key]
    if _is_spec(node):
      yield f"{prefix}{key}", node
    elif isinstance(node, (dict, ml_collections.ConfigDict)):
      yield from fields(node, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", node  # not a spec: validate names it


def _check_spec(field: str, spec: Any) -> None:
  if not _is_spec(spec):
    raise ConfigError(field, spec, "dict(min=..., max=..., scale=...) or dict(choices=(...))")
  if "choices" in spec:
    choices = spec["choices"]
    if isinstance(choices, (str, bytes)) or not isinstance(choices, (tuple, list)) or not choices:
      raise ConfigError(f"{field}.choices", choices, "a non-empty tuple of values")
    return
  scale = spec.get("scale", "linear")
  if scale not in SCALES:
    raise ConfigError(f"{field}.scale", scale, f"one of {', '.join(SCALES)}")
  for end in ("min", "max"):
    check_number(f"{field}.{end}", spec.get(end), what="a finite number")
  lo, hi = spec["min"], spec["max"]
  if lo >= hi:
    raise ConfigError(f"{field}.max", hi, f"a number above min={lo}")
  if scale == "log" and lo <= 0:
    raise ConfigError(f"{field}.min", lo, "a number > 0 (a log scale lives in (0, inf))")
  if scale == "reverse_log" and not (lo >= 0 and hi < 1):
    raise ConfigError(f"{field}.{'min' if lo < 0 else 'max'}", lo if lo < 0 else hi,
                      "a range inside [0, 1) (a reverse log scale is log(1 - value))")


def validate(search: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
             prefix: str = "sweep.search", swept: Iterable[str] = ()) -> None:
  """ConfigError naming the first bad setting: a spec, the trial count, a field the
  config does not have, or a field that a grid also sweeps (`swept`)."""
  specs = list(fields(search.space))
  check_number(f"{prefix}.trials", search.trials, low=0, integer=True, what="an integer >= 0")
  check_number(f"{prefix}.seed", search.seed, low=0, integer=True, what="an integer >= 0")
  if specs and search.trials < 1:
    raise ConfigError(f"{prefix}.trials", search.trials,
                      f"an integer >= 1 for a space of {len(specs)} fields")
  if search.trials and not specs:
    raise ConfigError(f"{prefix}.space", {}, f"at least one field for {search.trials} trials")
  swept = set(swept)
  probe = config.copy_and_resolve_references()
  for field, spec in specs:
    _check_spec(f"{prefix}.space.{field}", spec)
    if field in swept:
      raise ConfigError(f"{prefix}.space.{field}", dict(spec),
                        "a field no other sweep section sets (it is also swept)")
    set_field(probe, field, _value(spec, 0.5), where=f"{prefix}.space.{field}")


def _value(spec: Any, u: float) -> Any:
  if "choices" in spec:
    choices = tuple(spec["choices"])
    return choices[min(int(u * len(choices)), len(choices) - 1)]
  lo, hi, scale = float(spec["min"]), float(spec["max"]), spec.get("scale", "linear")
  if scale == "log":
    x = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
  elif scale == "reverse_log":
    x = 1 - math.exp(math.log1p(-lo) + u * (math.log1p(-hi) - math.log1p(-lo)))
  else:
    x = lo + u * (hi - lo)
  x = min(max(x, lo), hi)  # exp/log rounding at the ends
  return int(round(x)) if spec.get("integer", False) else float(x)


def trials(search: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """Each trial's overrides (dotted field -> a plain Python value), deterministic from
  search.seed; [] when there is no search."""
  specs = list(fields(search.space))
  if not specs or not search.trials:
    return []
  u = qmc.Halton(d=len(specs), scramble=True, seed=int(search.seed)).random(int(search.trials))
  return [{field: _value(spec, float(u_i)) for (field, spec), u_i in zip(specs, row)}
          for row in np.asarray(u)]
