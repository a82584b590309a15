"""The sweep figure: what a k x lr grid says, in three views.

  (a) final test accuracy vs batch size k, one line per learning-rate setting
  (b) the best setting per k: its learning rate (and accuracy, written beside it)
  (c) training loss per epoch, one panel per k, one line per setting
A setting is a learning rate plus any other swept field except k and the seed (decay,
model, ...); seeds of one setting are averaged in (a) and drawn alike in (c).
Diverged runs are crosses at the bottom of (a).
"""

from __future__ import annotations

import collections
import math
import os
from typing import Sequence

import numpy as np

from sgdlab.results import figures
from sgdlab.results.history import History

plt = figures.plt
# Fields that may tell settings apart, with their short names for legends.
_SETTING_FIELDS = (("learning_rate", "lr"), ("lr_decay", "decay"), ("lr_scaling", "scaling"),
                   ("model.name", "model"), ("optimizer.name", "opt"), ("schedule.name", "sched"),
                   ("num_epochs", "epochs"))


def _field(h: History, dotted: str):
  node = h.config
  for part in dotted.split("."):
    node = node.get(part) if isinstance(node, dict) else None
  return node


def _fmt(value) -> str:
  return f"{value:g}" if isinstance(value, float) else str(value)


def settings(histories: Sequence[History]) -> tuple[list[str], dict[str, list[History]]]:
  """Group runs by setting; the label names only fields that vary (lr always)."""
  varying = [(f, short) for f, short in _SETTING_FIELDS
             if f == "learning_rate" or len({repr(_field(h, f)) for h in histories}) > 1]
  groups: dict[str, list[History]] = collections.defaultdict(list)
  order = []
  for h in sorted(histories, key=lambda h: tuple(repr(_field(h, f)) for f, _ in varying)):
    label = " ".join(f"{short}={_fmt(_field(h, f))}" for f, short in varying)
    if label not in groups:
      order.append(label)
    groups[label].append(h)
  # Larger learning rates first, as a grid is usually read.
  order.sort(key=lambda lbl: -float(_field(groups[lbl][0], "learning_rate") or 0))
  return order, groups


def sweep_figure(histories: Sequence[History], path: str | os.PathLike | None = None,
                 title: str = ""):
  """The three views above in one figure; saved if path is given."""
  histories = [h for h in histories if isinstance(_field(h, "batch_size"), int)]
  if not histories:
    return None
  order, groups = settings(histories)
  ks = sorted({int(_field(h, "batch_size")) for h in histories})
  colors = {label: f"C{i % 10}" for i, label in enumerate(order)}
  ncols = min(4, len(ks))
  nrows = 1 + math.ceil(len(ks) / ncols)
  with plt.rc_context(figures._STYLE):
    fig = plt.figure(figsize=(3.2 * max(ncols, 2), 3.0 * nrows))
    grid = fig.add_gridspec(nrows, 2 * ncols)
    half = ncols
    ax_acc = fig.add_subplot(grid[0, :half])
    ax_best = fig.add_subplot(grid[0, half:])
    _accuracy_vs_k(ax_acc, order, groups, colors)
    _best_per_k(ax_best, histories, ks, order, groups, colors)
    for i, k in enumerate(ks):
      row, col = 1 + i // ncols, i % ncols
      ax = fig.add_subplot(grid[row, 2 * col:2 * col + 2])
      _loss_curves(ax, k, order, groups, colors)
    if title:
      fig.suptitle(title)
    fig.tight_layout()
  return figures._save(fig, path)


def _accuracy_vs_k(ax, order, groups, colors) -> None:
  low = 1.0
  for label in order:
    by_k = collections.defaultdict(list)
    for h in groups[label]:
      by_k[int(_field(h, "batch_size"))].append(h)
    ks = sorted(by_k)
    acc = [np.nanmean([h.final("test_accuracy") if not h.diverged else np.nan
                       for h in by_k[k]]) if any(not h.diverged for h in by_k[k]) else np.nan
           for k in ks]
    ax.plot(ks, acc, "-o", ms=4, color=colors[label], label=label)
    low = min([low] + [a for a in acc if np.isfinite(a)])
    bad = [k for k in ks if all(h.diverged for h in by_k[k])]
    if bad:
      ax.plot(bad, [0.0] * len(bad), "x", ms=8, mew=2, color=colors[label])
  _k_axis(ax, sorted({int(_field(h, "batch_size")) for g in order for h in groups[g]}))
  ax.set(xlabel="batch size k", ylabel="final test accuracy",
         title="(a) test accuracy vs k (x: diverged)")
  ax.legend(fontsize=7)


def _best_per_k(ax, histories, ks, order, groups, colors) -> None:
  best_lr, best_acc = [], []
  for k in ks:
    scores = []
    for label in order:
      runs = [h for h in groups[label] if int(_field(h, "batch_size")) == k and not h.diverged]
      if runs:
        scores.append((np.nanmean([h.final("test_accuracy") for h in runs]), label,
                       float(_field(runs[0], "learning_rate"))))
    scores = [s for s in scores if np.isfinite(s[0])]
    if not scores:
      best_lr.append(np.nan)
      best_acc.append(np.nan)
      continue
    acc, label, lr = max(scores)
    best_lr.append(lr)
    best_acc.append(acc)
    ax.scatter([k], [lr], s=60, color=colors[label], zorder=3)
    ax.annotate(f"{acc:.3f}", (k, lr), textcoords="offset points", xytext=(6, 4), fontsize=7)
  ax.plot(ks, best_lr, "-", color="0.6", zorder=1)
  _k_axis(ax, ks)
  ax.set_yscale("log")
  lrs = sorted({float(_field(h, "learning_rate")) for h in histories})
  ax.set_yticks(lrs, [_fmt(lr) for lr in lrs])
  ax.minorticks_off()
  ax.set(xlabel="batch size k", ylabel="learning rate of the best run",
         title="(b) best setting per k (its test accuracy)")


def _k_axis(ax, ks) -> None:
  ax.set_xscale("log", base=2)
  ax.set_xticks(ks, [str(k) for k in ks])
  ax.minorticks_off()


def _loss_curves(ax, k, order, groups, colors) -> None:
  for label in order:
    for j, h in enumerate(h for h in groups[label] if int(_field(h, "batch_size")) == k):
      epochs = h.epochs.get("epoch", [])
      loss = h.epochs.get("train_loss", [])
      ax.plot(epochs, loss, "-o", ms=2.5, color=colors[label],
              label=label + (" (diverged)" if h.diverged else "") if j == 0 else None)
      if h.diverged:
        ax.plot([len(epochs) + 1 if epochs else 1], [loss[-1] if loss else 0.0], "x",
                color=colors[label], ms=8, mew=2)
  ax.set(xlabel="epoch", ylabel="train loss", title=f"(c) k={k}")
  if any(ax.get_legend_handles_labels()[1]):
    ax.legend(fontsize=6)
