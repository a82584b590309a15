"""Runs that change k or the lr during training, side by side (Smith et al. 2018)."""

from __future__ import annotations

import collections
import os
from typing import Sequence

import numpy as np

from sgdlab.results.history import History


def epoch_end_updates(h: History) -> np.ndarray:
  """Updates taken by each epoch's end; k (and so an epoch's updates) may change."""
  n = len(h.epochs["epoch"])
  if "batch_size" not in h.epochs:
    return np.arange(1, n + 1) * (len(h.steps.get("loss", [])) / max(n, 1))
  ks, steps = np.asarray(h.epochs["batch_size"]), np.asarray(h.steps["batch_size"])
  per_epoch = [np.sum(steps == k) / np.sum(ks == k) for k in ks]
  return np.cumsum(per_epoch)


def by_name(histories: Sequence[History]) -> dict[str, list[History]]:
  """The runs grouped by run name (the seeds of one arm share it), diverged ones out."""
  groups: dict[str, list[History]] = collections.defaultdict(list)
  for h in histories:
    if not h.diverged:
      groups[h.name].append(h)
  return dict(groups)


def accuracy_by_schedule(histories: Sequence[History], path: str | os.PathLike,
                         metric: str = "test_accuracy") -> None:
  """metric against epochs (left) and against updates (right) per run name: the median
  over seeds, the interquartile range shaded. Smith et al.'s claim is that the curves
  meet on the left while the k-increasing runs take fewer updates on the right."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for i, (name, runs) in enumerate(sorted(by_name(histories).items())):
    n = min(len(h.epochs[metric]) for h in runs)
    values = np.array([h.epochs[metric][:n] for h in runs], np.float64)
    med, lo, hi = (np.percentile(values, q, axis=0) for q in (50, 25, 75))
    updates = np.median([epoch_end_updates(h)[:n] for h in runs], axis=0)
    for ax, x in ((left, np.arange(1, n + 1)), (right, updates)):
      ax.plot(x, med, color=f"C{i}", label=f"{name} ({len(runs)} seeds)")
      ax.fill_between(x, lo, hi, color=f"C{i}", alpha=0.25, lw=0)
  left.set_xlabel("epoch")
  right.set_xlabel("updates")
  right.set_xscale("log")
  left.set_ylabel(metric.replace("_", " ") + " (median, IQR shaded)")
  left.legend(fontsize=8)
  for ax in (left, right):
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
