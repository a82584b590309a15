"""Figures of the trial-budget study (`sgdlab.studies.trial_budget`): steps to the target
against k per optimizer with their fits and B_noise, and the best-so-far curves.

Both read the plain dict the study writes as results.json, so they can be redrawn from a
finished study.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

import numpy as np

from sgdlab.results import figures
from sgdlab.results.figures import plt


def _steps(value: Any) -> float:
  return math.inf if value is None else float(value)


def steps_figure(result: Mapping[str, Any], path: str | os.PathLike | None = None):
  """Left: per optimizer the median-of-studies steps against k (log-log), each with its
  S_min (1 + B_noise / k) fit. Right: B_noise per optimizer (Zhang et al. 2019: does
  preconditioning move the critical batch size up?)."""
  fits = result["fits"]
  with plt.rc_context(figures._STYLE):  # pylint: disable=protected-access
    fig, (ax_s, ax_b) = plt.subplots(1, 2, figsize=(9.5, 3.8),
                                     gridspec_kw=dict(width_ratios=(2, 1)))
    ks_all = np.array(result["batch_sizes"], np.float64)
    grid = np.geomspace(ks_all.min(), ks_all.max(), 200)
    names = list(result["cells"])
    for i, name in enumerate(names):
      cells = result["cells"][name]
      ks = np.array(sorted(int(k) for k in cells), np.float64)
      steps = np.array([_steps(cells[str(int(k))]["steps"]) for k in ks])
      ok = np.isfinite(steps)
      ax_s.plot(ks[ok], steps[ok], "o", color=f"C{i}", label=name, zorder=3)
      f = fits.get(name)
      if f:
        ax_s.plot(grid, f["s_min"] * (1 + f["b_noise"] / grid), "-", color=f"C{i}", lw=1,
                  alpha=0.7)
    ax_s.set(xscale="log", yscale="log", xlabel="batch size k",
             ylabel=f"steps to {result['metric']} {result['target']:g}",
             title="best of the trial budget (median over studies)")
    ax_s.legend(fontsize=7)
    fitted = [(n, fits[n]["b_noise"]) for n in names if fits.get(n)]
    ax_b.bar(range(len(fitted)), [b for _, b in fitted],
             color=[f"C{names.index(n)}" for n, _ in fitted])
    ax_b.set_xticks(range(len(fitted)), [n for n, _ in fitted], rotation=30, fontsize=8)
    ax_b.set(yscale="log", ylabel="fitted B_noise (examples)", title="critical batch size")
    fig.tight_layout()
  return figures._save(fig, path)  # pylint: disable=protected-access


def budget_figure(result: Mapping[str, Any], path: str | os.PathLike | None = None):
  """One panel per optimizer: the best steps so far against trials spent, a line per k
  (the median over studies; a shaded band from the best to the worst study). Where the
  lines are still falling at the last trial, the budget did not resolve that cell."""
  names = list(result["cells"])
  with plt.rc_context(figures._STYLE):  # pylint: disable=protected-access
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names) + 0.6, 3.2),
                             squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
      cells = result["cells"][name]
      for j, k in enumerate(sorted(int(k) for k in cells)):
        curves = np.array([[_steps(x) for x in c] for c in cells[str(k)]["curves"]])
        trials = np.arange(1, curves.shape[1] + 1)
        masked = np.where(np.isfinite(curves), curves, np.nan)
        if np.isfinite(masked).any():
          ax.plot(trials, np.median(curves, axis=0), "-", color=f"C{j}", label=f"k={k}")
          ax.fill_between(trials, np.nanmin(masked, 0), np.nanmax(masked, 0), color=f"C{j}",
                          alpha=0.15, lw=0)
      ax.set(xscale="linear", yscale="log", xlabel="trials spent", title=name)
    axes[0][0].set_ylabel("best steps so far")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
  return figures._save(fig, path)  # pylint: disable=protected-access
