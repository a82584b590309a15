"""Figures of curvature measured in training (config.sharpness_batches)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from sgdlab.results import schedule_figures
from sgdlab.results.history import History


def _steps(h: History) -> np.ndarray:
  """The update count at each epoch's end (k may change between epochs)."""
  return schedule_figures.epoch_end_updates(h)


def sharpness_over_steps(histories: Sequence[History], path: str | os.PathLike,
                         title: str = "") -> None:
  """lambda_max against updates for each run with 2 / lr beside it (Cohen et al. 2021's
  edge of stability), and the training loss below."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                    gridspec_kw=dict(height_ratios=(2, 1)))
  for i, h in enumerate(histories):
    color = f"C{i}"
    steps, lr = _steps(h), float(h.config.get("learning_rate"))
    eig = np.asarray(h.epochs["hessian_eig_1"], np.float64)
    ok = np.isfinite(eig)
    top.plot(steps[ok], eig[ok], color=color, label=f"lr={lr:g}")
    top.axhline(2.0 / lr, color=color, ls="--", lw=1)
    bottom.plot(steps, h.epochs["train_loss"], color=color)
  top.set_ylabel("top Hessian eigenvalue (dashed: 2 / lr)")
  top.set_yscale("log")
  top.legend(fontsize=8)
  bottom.set_yscale("log")
  bottom.set_ylabel("train loss")
  bottom.set_xlabel("updates")
  for ax in (top, bottom):
    ax.grid(alpha=0.3)
  top.set_title(title or "sharpness in full-batch gradient descent")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def sharpness_against_k(histories: Sequence[History], path: str | os.PathLike,
                        title: str = "") -> None:
  """Final lambda_max and epsilon-sharpness against k, one marker per seed, per lr."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  figures = [("hessian_eig_1", "top Hessian eigenvalue"),
             ("epsilon_sharpness", "epsilon-sharpness (%)")]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  lrs = sorted({float(h.config.get("learning_rate")) for h in histories}, reverse=True)
  for ax, (key, label) in zip(axes, figures):
    for i, lr in enumerate(lrs):
      runs = [h for h in histories if float(h.config.get("learning_rate")) == lr
              and not h.diverged and key in h.epochs]
      ks = [int(h.config.get("batch_size")) for h in runs]
      values = [h.final(key) for h in runs]
      jitter = np.exp(np.linspace(-0.06, 0.06, max(len(ks), 1)))
      ax.scatter(np.asarray(ks) * jitter[:len(ks)], values, s=14, color=f"C{i}",
                 alpha=0.7, label=f"lr={lr:g}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size k")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(title or "sharpness at the end of training, each seed (diverged left out)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
