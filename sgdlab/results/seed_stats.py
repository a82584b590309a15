"""Seeds as statistics: rates with intervals, and medians of the runs that trained.

Over a handful of seeds an outcome such as "diverged" is a rate, and three seeds cannot
tell "never" from "one run in four". The Wilson score interval (Wilson 1927; Brown, Cai &
DasGupta 2001 recommend it over the normal approximation for small n) gives the range of
rates the seeds are consistent with. A diverged seed's loss is 1e13 or nan: its figures
never enter a median, so the final figures are the median and interquartile range of the
seeds that did not diverge.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Z_95 = 1.959964  # two-sided 95% normal quantile


def wilson(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
  """The Wilson score interval of a rate `successes / n` (95% by default)."""
  if n <= 0:
    raise ValueError(f"wilson: n={n}, needs at least one trial")
  if not 0 <= successes <= n:
    raise ValueError(f"wilson: successes={successes} outside 0..{n}")
  p = successes / n
  denom = 1.0 + z * z / n
  center = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return max(0.0, center - half), min(1.0, center + half)


def rate_cell(flags: Sequence[bool]) -> str:
  """'3 of 10 (11-60%)': how many seeds, and the 95% Wilson interval of the rate."""
  yes, n = int(sum(bool(f) for f in flags)), len(flags)
  lo, hi = wilson(yes, n)
  return f"{yes} of {n} ({100 * lo:.0f}-{100 * hi:.0f}%)"


def median_iqr(values: Sequence[float]) -> tuple[float, float, float] | None:
  """(median, first quartile, third quartile) of the finite values; None if there are none."""
  finite = [float(v) for v in values if v is not None and math.isfinite(v)]
  if not finite:
    return None
  q1, med, q3 = np.percentile(finite, [25, 50, 75])
  return float(med), float(q1), float(q3)
