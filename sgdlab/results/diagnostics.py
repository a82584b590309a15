"""Per-epoch metrics from per-step ones, and the diagnostics a researcher reads first."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

# A rise smaller than this (relative) is float noise, not a non-monotone curve.
_RISE_TOLERANCE = 1e-4
# "More epochs would help" needs a trend (see `trend`): the slope over the last 3 epochs
# beyond _TREND_SIGMAS times the noise of the last _TREND_CHANGES epoch-to-epoch changes,
# and beyond a size worth an epoch.
_TREND_CHANGES = 5
_TREND_SIGMAS = 2.0
_MIN_ACCURACY_SLOPE = 0.002  # accuracy per epoch
_MIN_LOG_LOSS_SLOPE = 0.01  # relative train-loss fall per epoch
_FITTED = 0.99


def epoch_means(step_metrics: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Keras' epoch figures: the running means of loss and accuracy over the epoch's steps.

  Weighted by each step's real examples, so the padded last batch counts for its size.
  """
  count = np.asarray(step_metrics["count"], np.float64)
  total = max(count.sum(), 1.0)
  loss = np.asarray(step_metrics["loss"], np.float64)
  return dict(train_loss=float(np.sum(loss * count) / total),
              train_accuracy=float(np.sum(step_metrics["correct"]) / total))


def stability_threshold(optimizer: str, momentum: float) -> float | None:
  """The largest lr x lambda at which the optimizer's iteration is stable on a quadratic of
  curvature lambda (Cohen et al. 2021, appendix): 2 for gradient descent, 2 + 2 mu for
  heavy-ball momentum, (2 + 2 mu) / (1 + 2 mu) for Nesterov; None for Adam, LARS and
  LAMB, whose steps are preconditioned or rescaled per layer."""
  if optimizer == "sgd":
    return 2.0
  if optimizer == "momentum":
    return 2.0 + 2.0 * momentum
  if optimizer == "nesterov":
    return (2.0 + 2.0 * momentum) / (1.0 + 2.0 * momentum)
  return None


def _ranges(numbers: list[int]) -> str:
  """[3, 4, 5, 7] -> '3-5, 7'."""
  runs: list[list[int]] = []
  for n in numbers:
    if runs and n == runs[-1][-1] + 1:
      runs[-1].append(n)
    else:
      runs.append([n])
  return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def stability_note(epochs: Mapping[str, list[float]], threshold: float | None) -> str | None:
  """lr_t x lambda_max over the epochs against the optimizer's threshold, where the
  sharpness was measured: the condition the folklore "a non-monotone loss means the lr is
  too large" stands for."""
  eig, lr = epochs.get("hessian_eig_1"), epochs.get("lr")
  if not eig or not lr or threshold is None:
    return None
  product = np.asarray(eig, np.float64) * np.asarray(lr[:len(eig)], np.float64)
  finite = np.isfinite(product)
  if not finite.any():
    return None
  i = int(np.nanargmax(np.where(finite, product, -np.inf)))
  over = [e + 1 for e in range(len(product)) if finite[e] and product[e] > threshold]
  where = (f"above {threshold:.3g} in epoch{'s' if len(over) > 1 else ''} "
           f"{_ranges(over)}: unstable along the sharpest direction"
           if over else f"below {threshold:.3g} throughout: stable along the sharpest "
           "direction")
  return f"lr x lambda_max peaked at {product[i]:.3g} (epoch {i + 1}), {where}"


def diagnose(epochs: Mapping[str, list[float]], *, diverged: str, batch_size: Any,
             learning_rate: float, threshold: float | None = None) -> list[str]:
  """Plain-language findings about one run's curves; empty when nothing stands out.
  threshold: the optimizer's lr x lambda_max stability bound (`stability_threshold`)."""
  notes = []
  if diverged:
    notes.append(f"{diverged}: lr={learning_rate:g} is too large for k={batch_size}")
  loss = np.asarray(epochs.get("train_loss", []), np.float64)
  rose = [i + 2 for i in range(len(loss) - 1)
          if loss[i + 1] > loss[i] * (1 + _RISE_TOLERANCE)]
  if rose:
    which = ", ".join(str(e) for e in rose)
    notes.append(f"loss rose in epoch{'s' if len(rose) > 1 else ''} {which}: "
                 f"lr={learning_rate:g} may be too large for k={batch_size}")
  acc = np.asarray(epochs.get("test_accuracy", []), np.float64)
  train_acc = epochs.get("train_accuracy", [0.0])[-1] if epochs.get("train_accuracy") else 0.0
  if not diverged:
    acc_slope = trend(acc, _MIN_ACCURACY_SLOPE)
    # A falling loss on a fitted training set (accuracy ~1) is no reason for more epochs.
    loss_slope = (trend(-np.log(np.maximum(loss, 1e-30)), _MIN_LOG_LOSS_SLOPE)
                  if train_acc < _FITTED else None)
    if acc_slope is not None or loss_slope is not None:
      what = (f"test accuracy rising {100 * acc_slope:+.2f} pts/epoch" if acc_slope is not None
              else f"train loss falling {100 * (1 - np.exp(-loss_slope)):.1f}%/epoch")
      notes.append(f"{what} over the last 3 epochs, beyond the epoch-to-epoch noise: "
                   "more epochs would help")
  stability = stability_note(epochs, threshold)
  return notes + ([stability] if stability else [])


def trend(values: np.ndarray, min_slope: float) -> float | None:
  """The slope per epoch over the last 3 epochs when it is at least min_slope and more
  than _TREND_SIGMAS times the noise of the epoch-to-epoch changes; else None.

  The noise is the scatter of the last _TREND_CHANGES changes around their own linear
  trend, so a curve that rises smoothly while slowing down counts as evidence, a
  jumpy one (large k, large lr) needs a clear rise, and a curve that fell at its end
  does not qualify. Needs _TREND_CHANGES + 1 epochs; shorter runs get no verdict.
  """
  y = np.asarray(values, np.float64)[-(_TREND_CHANGES + 1):]
  if len(y) < _TREND_CHANGES + 1 or not np.all(np.isfinite(y)):
    return None
  slope = (y[-1] - y[-3]) / 2
  d = np.diff(y)
  t = np.arange(len(d), dtype=np.float64) - (len(d) - 1) / 2
  residual = d - d.mean() - t * np.sum(t * (d - d.mean())) / np.sum(t * t)
  noise = math.sqrt(float(np.sum(residual ** 2)) / (len(d) - 2))
  return float(slope) if slope >= min_slope and slope > _TREND_SIGMAS * noise else None


def is_monotone(epochs: Mapping[str, list[float]]) -> bool:
  loss = np.asarray(epochs.get("train_loss", []), np.float64)
  return bool(np.all(loss[1:] <= loss[:-1] * (1 + _RISE_TOLERANCE)))
