"""Figures for papers: one run's curves, all runs of an experiment overlaid, bytes vs k."""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files, never windows: launchers run on headless machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

_STYLE = {"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
          "axes.grid": True, "grid.alpha": 0.3, "legend.frameon": False}


def _save(fig, path: str | os.PathLike | None):
  """Write the figure atomically; a saved figure is closed (a sweep draws hundreds)."""
  if path is not None:
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=150, bbox_inches="tight")
    os.replace(tmp, path)
    plt.close(fig)
  return fig


def history_figure(history, path: str | os.PathLike | None = None):
  """Loss and accuracy per epoch (train solid, test dashed), the classic pair."""
  with plt.rc_context(_STYLE):
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(8, 3.2))
    _draw(ax_loss, ax_acc, history, color="C0", label="")
    title = history.name + (f"  ({history.diverged})" if history.diverged else "")
    fig.suptitle(title)
    ax_loss.legend()
    fig.tight_layout()
  return _save(fig, path)


def overlay_figure(histories: Sequence, path: str | os.PathLike | None = None,
                   title: str = ""):
  """All runs of an experiment on shared axes: how k and lr change the curves."""
  with plt.rc_context(_STYLE):
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, h in enumerate(histories):
      _draw(ax_loss, ax_acc, h, color=f"C{i % 10}", label=h.name)
    if title:
      fig.suptitle(title)
    fig.tight_layout()
    handles, labels = ax_acc.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(3, max(1, len(labels))), fontsize=8)
  return _save(fig, path)


def _draw(ax_loss, ax_acc, history, *, color: str, label: str) -> None:
  e = history.epochs.get("epoch", [])
  prefix = f"{label} " if label else ""
  ax_loss.plot(e, history.epochs.get("train_loss", []), "-o", ms=3, color=color,
               label=f"{prefix}train")
  ax_loss.plot(e, history.epochs.get("test_loss", []), "--", color=color, alpha=0.7,
               label=f"{prefix}test" if not label else None)
  ax_acc.plot(e, history.epochs.get("train_accuracy", []), "-o", ms=3, color=color,
              label=label or "train")
  ax_acc.plot(e, history.epochs.get("test_accuracy", []), "--", color=color, alpha=0.7,
              label=None if label else "test")
  for ax in (ax_loss, ax_acc):
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
  ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy (solid: train, dashed: test)")


def bytes_vs_k_figure(reports: Sequence, path: str | os.PathLike | None = None):
  """Per-device bytes of every compiled k, one line per input size, with the budget."""
  fig, ax = plt.subplots(figsize=(6, 3.8))
  reports = [r for r in reports if hasattr(r, "probes")]
  for i, r in enumerate(reports):
    ks, bs = zip(*sorted(r.probes.items()))
    ax.plot(ks, np.array(bs) / 2**30, "-o", ms=3, color=f"C{i}",
            label=f"{'x'.join(map(str, r.input_shape))}: k={r.chosen}")
  budget = reports[0].budget
  ax.axhline(budget.bytes / 2**30, color="k", ls="--", lw=1, label="budget")
  ax.axhline(budget.usable / 2**30, color="k", lw=1, label=f"usable ({budget.headroom:.0%} headroom)")
  ax.set(xscale="log", yscale="log", xlabel="global batch size k",
         ylabel="GiB per device", title="compiled train step: bytes vs k")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, frameon=False)
  fig.tight_layout()
  return _save(fig, path)


def plan_figure(report, path: str | os.PathLike | None = None):
  """Per-device bytes of each fixed-k plan compiled, by micro-batch, one line per
  (remat, dtype), with the budget; the chosen plan circled."""
  fig, ax = plt.subplots(figsize=(6, 3.8))
  families = sorted({(p.remat, p.dtype) for p in report.plans})
  for i, (remat, dtype) in enumerate(families):
    plans = sorted((p for p in report.plans if (p.remat, p.dtype) == (remat, dtype)),
                   key=lambda p: p.microbatch_size)
    ax.plot([p.microbatch_size for p in plans], [p.bytes / 2**30 for p in plans], "-o",
            ms=3, color=f"C{i}", label=f"{dtype}, remat {'on' if remat else 'off'}")
  c = report.chosen
  ax.plot([c.microbatch_size], [c.bytes / 2**30], "o", ms=10, mfc="none", color="k",
          label=f"chosen: {c.microbatch_size} x {c.accumulation_steps}")
  ax.axhline(report.budget.bytes / 2**30, color="k", ls="--", lw=1, label="budget")
  ax.axhline(report.budget.usable / 2**30, color="k", lw=1, label="usable")
  ax.set(xscale="log", yscale="log", xlabel="micro-batch per device",
         ylabel="GiB per device", title=f"k={report.k} fixed: bytes of each plan")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, frameon=False)
  fig.tight_layout()
  return _save(fig, path)
