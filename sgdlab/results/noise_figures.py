"""Figures of the steps-to-target experiment and of the noise scale over training.

Both read the plain dict that experiments/steps_to_target.py writes as results.json,
so a figure can be redrawn from a finished run without training again.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

import numpy as np

from sgdlab.results import figures
from sgdlab.results.figures import plt


def steps_figure(result: Mapping[str, Any], path: str | os.PathLike | None = None):
  """Steps and examples to the target versus k (log-log), with the fit and the regimes.

  Left: the best steps per k, the perfect-scaling line S ~ 1/k through the smallest k,
  the fit S_min (1 + B_noise / k), and B_noise (fitted) and B_simple (online) marked.
  Right: examples k * S, which stay flat under perfect scaling.
  """
  best = {int(k): b for k, b in result["best"].items()}
  ks = np.array(sorted(best), np.float64)
  steps = np.array([best[int(k)]["steps"] for k in ks], np.float64)
  fit = result.get("fit")
  b_online = _online_at_target(result)
  with plt.rc_context(figures._STYLE):  # pylint: disable=protected-access
    fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    grid = np.geomspace(min(ks.min(), 1), max(ks.max(), 1), 200) if len(ks) else np.array([])
    if len(ks):
      ax_s.plot(ks, steps, "o", color="C0", label="measured (best lr per k)", zorder=3)
      ax_e.plot(ks, ks * steps, "o", color="C0", label="measured", zorder=3)
      # Perfect scaling: a fixed number of examples, the fit's E_min (else the first point).
      e_perfect = fit["e_min"] if fit else steps[0] * ks[0]
      ax_s.plot(grid, e_perfect / grid, ":", color="gray", label="perfect scaling S = E_min / k")
      ax_e.axhline(e_perfect, ls=":", color="gray", label="perfect scaling E_min")
    if fit:
      s_fit = fit["s_min"] * (1 + fit["b_noise"] / grid)
      label = f"fit S_min(1+B/k): S_min={fit['s_min']:.0f}, B_noise={fit['b_noise']:.0f}"
      ax_s.plot(grid, s_fit, "-", color="C1", label=label)
      ax_e.plot(grid, grid * s_fit, "-", color="C1", label="fit")
      ax_s.axhline(fit["s_min"], ls="--", color="C1", alpha=0.5, lw=0.8)
      for ax in (ax_s, ax_e):
        ax.axvline(fit["b_noise"], color="C1", ls="--", lw=1)
    if b_online and math.isfinite(b_online):
      for ax in (ax_s, ax_e):
        ax.axvline(b_online, color="C2", ls="-.", lw=1,
                   label=f"B_simple in training at target ({b_online:.0f})" if ax is ax_s else None)
    what = result["metric"].replace("_", " ")
    ax_s.set(xscale="log", yscale="log", xlabel="batch size k", ylabel="steps to target",
             title=f"steps to {what} {result['target']:g}")
    ax_e.set(xscale="log", yscale="log", xlabel="batch size k", ylabel="examples to target",
             title="examples = k x steps")
    ax_s.legend(fontsize=7, loc="lower left")
    ax_e.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
  return figures._save(fig, path)  # pylint: disable=protected-access


def noise_figure(result: Mapping[str, Any], path: str | os.PathLike | None = None):
  """B_simple over one ordinary training run: online EMA, and exact at checkpoints.

  Left: the online estimate's EMA ratio per step (and its windowed trend), the trainer's
  probe at each epoch's end, the exact value and the fixed-params online average at
  each checkpoint, and the fitted B_noise. Right: the EMAs of |G|^2
  and tr(Sigma) themselves, with the exact values.
  """
  n = result["noise"]
  grad_sq, trace = _array(n["step_grad_sq"]), _array(n["step_trace_sigma"])
  steps = np.arange(1, len(grad_sq) + 1)
  ckpts = n["checkpoints"]
  fit = result.get("fit")
  with plt.rc_context(figures._STYLE):  # pylint: disable=protected-access
    fig, (ax_b, ax_g) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    ax_b.plot(steps, _array(n["step_b_simple_ema"]), "-", color="C2", lw=1,
              label=f"online, EMA {n['noise_ema']:g} (k={n['batch_size']})")
    window = n.get("step_b_simple_window")
    if window:  # index s: after s steps
      ax_b.plot(np.arange(len(window)), _array(window), color="C1", lw=1,
                label=f"online, trend of the last {n['noise_window']} steps")
    spe = _steps_per_epoch(n)
    per_epoch = n.get("epoch_b_simple_mean")
    if per_epoch:
      ax_b.step([spe * i for i in range(len(per_epoch) + 1)], [per_epoch[0], *per_epoch],
                where="pre", color="C2", alpha=0.4, lw=1, label="online, ratio of epoch means")
    probe = n.get("epoch_b_simple_probe")
    if probe:  # at each epoch's end, as the trainer logged it
      ax_b.plot([spe * (i + 1) for i in range(len(probe))], _array(probe), ".", color="C0",
                label=f"in training, probe of {n['noise_probe_batches']} batches per epoch")
    ax_b.plot([c["step"] for c in ckpts], [c["exact_b_simple"] for c in ckpts], "kx", ms=7,
              label="exact (per-example gradients)")
    ax_b.plot([c["step"] for c in ckpts], [c["online_b_simple"] for c in ckpts], "o",
              mfc="none", color="C3", label="online, averaged at fixed params")
    if fit:
      ax_b.axhline(fit["b_noise"], color="C1", ls="--", lw=1,
                   label=f"fitted B_noise ({fit['b_noise']:.0f})")
    target = result.get("noise_target_step")
    if target:
      for ax in (ax_b, ax_g):
        ax.axvline(target, color="gray", ls=":", lw=1,
                   label="steps to target at this k (sweep)" if ax is ax_b else None)
    ax_b.set(xlabel="step", ylabel="B_simple = tr(Σ) / |G|²", yscale="log",
             title="simple noise scale during training")
    ax_b.legend(fontsize=7)
    decay = n["noise_ema"]
    ema = lambda v: _ema(v, decay)
    ax_g.plot(steps, ema(grad_sq), color="C0", lw=1, label="|G|² (online EMA)")
    ax_g.plot(steps, ema(trace), color="C4", lw=1, label="tr(Σ) (online EMA)")
    ax_g.plot([c["step"] for c in ckpts], [c["exact_grad_sq"] for c in ckpts], "x", color="C0")
    ax_g.plot([c["step"] for c in ckpts], [c["exact_trace_sigma"] for c in ckpts], "x",
              color="C4", label="exact")
    ax_g.set(xlabel="step", yscale="log", title="the two estimates")
    ax_g.legend(fontsize=7)
    fig.tight_layout()
  return figures._save(fig, path)  # pylint: disable=protected-access


def _ema(values: np.ndarray, decay: float) -> np.ndarray:
  acc, count, out = 0.0, 0, []
  for v in values:
    if np.isfinite(v):
      acc, count = decay * acc + (1 - decay) * v, count + 1
    out.append(acc / (1 - decay ** count) if count else math.nan)
  return np.asarray(out)


def _online_at_target(result: Mapping[str, Any]) -> float | None:
  """The B_simple in training at the step where the noise run reached the target: where
  the probe ran, the geometric mean of its values at the epoch end nearest that step and
  the ones either side (B_simple can change 2-5x from one epoch end to the next), else
  the windowed trend, else the EMA."""
  n = result.get("noise")
  if n and n.get("epoch_b_simple_probe"):
    probe = _array(n["epoch_b_simple_probe"])
    spe = _steps_per_epoch(n)
    step = int(result.get("noise_target_step") or spe * len(probe))
    i = min(max(round(step / spe) - 1, 0), len(probe) - 1)
    near = probe[max(i - 1, 0):i + 2]
    near = near[np.isfinite(near) & (near > 0)]
    return float(np.exp(np.mean(np.log(near)))) if len(near) else None
  if not n or not (n.get("step_b_simple_window") or n.get("step_b_simple_ema")):
    return None
  if n.get("step_b_simple_window"):  # index s: after s steps
    curve = n["step_b_simple_window"]
    i = min(len(curve) - 1, int(result.get("noise_target_step") or len(curve) - 1))
    value = curve[i]
    return None if value is None else float(value)
  curve = n["step_b_simple_ema"]
  i = min(len(curve), int(result.get("noise_target_step") or len(curve))) - 1
  value = curve[i]
  return None if value is None else float(value)


def _steps_per_epoch(n: Mapping[str, Any]) -> int:
  """The noise run's steps per epoch (older results.json: from n_train and k)."""
  return n.get("steps_per_epoch") or math.ceil(n["n_train"] / n["batch_size"])


def _array(values) -> np.ndarray:
  """Floats from a results.json list, where JSON's null stands for NaN."""
  return np.asarray([math.nan if v is None else v for v in values], np.float64)
