"""Gradient noise scale (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training").

B_simple = tr(Sigma) / |G|^2, with Sigma the per-example gradient covariance and G the
true gradient, predicts the critical batch size: below it doubling k halves the steps
to a target, above it returns diminish.

The online estimate (their Appendix A.1) uses two batch sizes that the data-parallel
step already has: B_small (one device's shard, or half the batch on one device) and
B_big (the global batch). Since E|G_B|^2 = |G|^2 + tr(Sigma) / B,
  |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
  tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)
are unbiased; each is averaged (EMA) on its own and B_simple is their ratio, since
the ratio of noisy estimates is biased.
"""

from __future__ import annotations

import numpy as np


def online_estimates(g_small_sq: np.ndarray, g_big_sq: np.ndarray, b_small: np.ndarray,
                     b_big: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Unbiased per-step estimates (|G|^2, tr(Sigma)) from the two batch sizes."""
  g_small_sq, g_big_sq = np.asarray(g_small_sq, np.float64), np.asarray(g_big_sq, np.float64)
  b_small, b_big = np.asarray(b_small, np.float64), np.asarray(b_big, np.float64)
  grad_sq = (b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small)
  trace = (g_small_sq - g_big_sq) / (1.0 / b_small - 1.0 / b_big)
  return grad_sq, trace


class NoiseEMA:
  """Bias-corrected EMAs of |G|^2 and tr(Sigma); fed per step, read per epoch.

  Pure host arithmetic over the per-step estimates stored in the history, so a resumed
  run rebuilds the same state by replaying them.
  """

  def __init__(self, decay: float):
    self.decay = decay
    self.grad_sq = 0.0
    self.trace = 0.0
    self.n = 0

  def update(self, grad_sq: np.ndarray, trace: np.ndarray) -> None:
    for g, t in zip(np.ravel(grad_sq), np.ravel(trace)):
      if not (np.isfinite(g) and np.isfinite(t)):
        continue
      self.grad_sq = self.decay * self.grad_sq + (1 - self.decay) * g
      self.trace = self.decay * self.trace + (1 - self.decay) * t
      self.n += 1

  def values(self) -> tuple[float, float, float]:
    """(|G|^2, tr(Sigma), B_simple) so far; NaN before the first full batch."""
    if self.n == 0:
      return float("nan"), float("nan"), float("nan")
    correction = 1 - self.decay ** self.n
    g, t = self.grad_sq / correction, self.trace / correction
    return g, t, (t / g if g > 0 else float("inf"))
