"""B_simple per step from windowed exponential trends of the online estimates.

The EMA in `sgdlab.noise.NoiseEMA` (decay 0.95) averages about 20 steps and reports
their mean: when |G|^2 falls by 10x in 20 steps it lags far behind. Here each of
|G|^2 and tr(Sigma) gets a local trend y(j) = A exp(b (j - s)) fitted over a short
window of the unbiased per-step estimates and read at step s itself, so an
exponential rise or fall, the common shape of both during training, gives no lag.

The fit solves the quasi-Poisson (log link) score equations over the window's
finite entries v_j at offsets x_j = j - s:
    sum_j v_j = sum_j A exp(b x_j)          (the window's total is kept)
    sum_j x_j v_j = sum_j x_j A exp(b x_j)   (and its centre of mass)
The centroid of exp(b x) over fixed x_j grows monotonically with b, so b is found by
bisection in [-max_rate, max_rate] and A = sum v / sum exp(b x) is the trend at s.
With b = 0 this is the window mean: bias-corrected like the EMA, since the
weights are normalised over the entries actually present (the first steps, the
NaNs of partial batches). Only the sums enter, so single negative estimates (|G|^2
below its noise) are fine; a window whose sum is <= 0 falls back to its mean.
B_simple is the ratio of the two trends, never a mean of per-step ratios (biased).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

_BISECTIONS = 60


def _window_entries(n: int, window: int, two_sided: bool) -> tuple[np.ndarray, np.ndarray]:
  """Offsets j - s [n + 1, L] of the entries behind the estimate at each s = 0..n, and
  which of them exist.

  Causal: the `window` entries s - window + 1 .. s (entry s is the batch at the
  parameters after s steps, which step s + 1 computes before it updates them).
  Two-sided: s - window .. s + window.
  """
  if window < 1:
    raise ValueError(f"window {window} must be >= 1")
  offsets = np.arange(-window, window + 1) if two_sided else np.arange(-window + 1, 1)
  j = np.arange(n + 1)[:, None] + offsets[None, :]
  return np.broadcast_to(offsets, j.shape).astype(np.float64), (j >= 0) & (j < n)


def trend_at(values: Sequence[float], window: int, *, two_sided: bool = False,
             max_rate: float = 1.0) -> np.ndarray:
  """The exponential trend of `values` at each s = 0..n (length n + 1); see the module.

  NaN where the window holds no finite entry; a single entry is its own value (no
  slope). max_rate bounds |b| per step: it only matters when the window's centre of
  mass lies at or past its edge (a spike there, or negative entries).
  """
  v = np.asarray(values, np.float64)
  n = len(v)
  x, inside = _window_entries(n, window, two_sided)
  j = np.clip(np.arange(n + 1)[:, None] + x.astype(np.int64), 0, max(n - 1, 0))
  vals = v[j] if n else np.zeros(x.shape)
  ok = inside & np.isfinite(vals)
  vals = np.where(ok, vals, 0.0)
  count = ok.sum(1)
  total = vals.sum(1)
  fit = total > 0
  safe_total = np.where(fit, total, 1.0)
  centroid = (x * vals).sum(1) / safe_total

  def centre(b):  # centroid of exp(b x) over the present entries; shift for overflow
    e = np.where(ok, b[:, None] * x, -np.inf)
    w = np.exp(e - np.max(np.where(ok, e, -np.inf), axis=1, initial=-1e300, keepdims=True))
    return (x * w).sum(1) / np.maximum(w.sum(1), 1e-300)

  lo, hi = np.full(n + 1, -float(max_rate)), np.full(n + 1, float(max_rate))
  for _ in range(_BISECTIONS):
    mid = (lo + hi) / 2
    below = centre(mid) < centroid
    lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
  b = np.where(fit & (count > 1), (lo + hi) / 2, 0.0)  # one entry: no slope, its value
  norm = np.where(ok, np.exp(np.minimum(b[:, None] * x, 700.0)), 0.0).sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    out = np.where(fit, total / norm, total / count)
  return np.where(count > 0, out, np.nan)


def windowed_curve(grad_sq: Sequence[float], trace: Sequence[float], window: int = 3, *,
                   two_sided: bool = False, max_rate: float = 1.0) -> np.ndarray:
  """B_simple = tr(Sigma) / |G|^2 at the parameters after s = 0..n steps (length n + 1).

  grad_sq, trace: the per-step unbiased estimates (entry j from the batch at the
  parameters after j steps, NaN for partial batches), finite-set corrected as wanted.
  Each is fitted with `trend_at` and B_simple is their ratio; inf where the |G|^2 trend
  is <= 0 (its noise dominates: B_simple far above the batch size), as NoiseEMA.

  Causal (the default) uses entries <= s only: what the trainer knows at the
  parameters after s steps once the next step has drawn its batch there; at s = n (no
  entry yet) the trend is continued one step. window=3
  was best on per-step exact values of the MLP/MNIST k=256 run (docs in
  experiments/noise_checkpoints.py): there B_simple itself changes by 2-5x from one
  step to the next, so longer windows average over real changes, not noise.
  two_sided=True uses entries s - window .. s + window: POST HOC ONLY (it reads
  steps after s), for a smoother curve over a finished run.
  """
  g = trend_at(grad_sq, window, two_sided=two_sided, max_rate=max_rate)
  t = trend_at(trace, window, two_sided=two_sided, max_rate=max_rate)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(g > 0, t / np.where(g > 0, g, 1.0), np.where(np.isnan(g), np.nan, np.inf))
