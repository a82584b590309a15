"""Per-epoch metrics from per-step ones, and the diagnostics a researcher reads first."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

# A rise smaller than this (relative) is float noise, not a non-monotone curve.
_RISE_TOLERANCE = 1e-4
# Still improving: the last epoch cut the train loss by more than this fraction, or
# raised the test accuracy by more than this many points.
_STILL_IMPROVING_LOSS = 0.01
_STILL_IMPROVING_ACCURACY = 0.002
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


def diagnose(epochs: Mapping[str, list[float]], *, diverged: str, batch_size: Any,
             learning_rate: float) -> list[str]:
  """Plain-language findings about one run's curves; empty when nothing stands out."""
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
  if not diverged and len(loss) >= 2:
    loss_gain = (loss[-2] - loss[-1]) / max(abs(loss[-2]), 1e-12)
    acc_gain = acc[-1] - acc[-2] if len(acc) >= 2 else 0.0
    train_acc = epochs.get("train_accuracy", [0.0])[-1]
    # A falling loss on a fitted training set (accuracy ~1) is no reason for more epochs.
    loss_says = loss_gain > _STILL_IMPROVING_LOSS and train_acc < _FITTED
    if loss_says or acc_gain > _STILL_IMPROVING_ACCURACY:
      what = "accuracy" if acc_gain > _STILL_IMPROVING_ACCURACY else "loss"
      verb = "rising" if what == "accuracy" else "falling"
      notes.append(f"{what} still {verb} at the last epoch "
                   f"(train loss -{100 * loss_gain:.1f}%, test accuracy "
                   f"{100 * acc_gain:+.2f} pts): more epochs would help")
  return notes


def is_monotone(epochs: Mapping[str, list[float]]) -> bool:
  loss = np.asarray(epochs.get("train_loss", []), np.float64)
  return bool(np.all(loss[1:] <= loss[:-1] * (1 + _RISE_TOLERANCE)))
