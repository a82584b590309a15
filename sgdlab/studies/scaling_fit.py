"""The best run per k, McCandlish et al.'s S(k) fit to them, and the study's table.

McCandlish et al. (2018), "An Empirical Model of Large-Batch Training": the steps to
a target S and the examples E = k S trade off as (S / S_min - 1)(E / E_min - 1) = 1,
i.e. S = S_min (1 + B_noise / k) with E_min = S_min B_noise. The fit itself is
`sgdlab.noise.fit_steps` (least squares in log S); this module picks the points and
writes them out.
"""

from __future__ import annotations

from typing import Any, Sequence

from sgdlab import noise


def best_runs(runs: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
  """Per k, the run that reached the target in the fewest steps (ties: the smaller lr)."""
  out: dict[int, dict[str, Any]] = {}
  for r in runs:
    if r["steps"] is None:
      continue
    b = out.get(r["k"])
    if b is None or (r["steps"], r["learning_rate"]) < (b["steps"], b["learning_rate"]):
      out[r["k"]] = r
  return out


def fit(best: dict[int, dict[str, Any]]) -> noise.StepsFit | None:
  """S = S_min (1 + B_noise / k) through the best runs; None below two k."""
  if len(best) < 2:
    return None
  return noise.fit_steps(list(best), [b["steps"] for b in best.values()])


def fit_record(steps_fit: noise.StepsFit | None) -> dict[str, float] | None:
  """What results.json holds of the fit."""
  if steps_fit is None:
    return None
  return dict(s_min=steps_fit.s_min, b_noise=steps_fit.b_noise, e_min=steps_fit.e_min,
              rms_log_error=steps_fit.rms_log_error)


def fit_line(steps_fit: noise.StepsFit) -> str:
  return (f"fit S = S_min (1 + B_noise / k): S_min = {steps_fit.s_min:.1f} steps, "
          f"B_noise = {steps_fit.b_noise:.0f}, E_min = {steps_fit.e_min:,.0f} examples, "
          f"rms log error {steps_fit.rms_log_error:.3f}")


def table(ks: Sequence[int], runs: Sequence[dict[str, Any]], best: dict[int, dict[str, Any]],
          steps_fit: noise.StepsFit | None) -> str:
  """Markdown: per k its micro-batch plan, best lr, steps, examples, the fit, every lr tried."""
  head = ("| k | micro-batch | best lr | steps | examples | fit S(k) | test at target "
          "| lrs tried (steps) |")
  rows = [head, "|---:|---:|---:|---:|---:|---:|---:|---|"]
  for k in ks:
    tried = ", ".join(f"{r['learning_rate']:.3g} ({r['steps'] if r['steps'] else '-'})"
                      for r in runs if r["k"] == k)
    b = best.get(k)
    fit_s = f"{float(steps_fit.steps(k)):.0f}" if steps_fit else "-"
    first = next(r for r in runs if r["k"] == k)
    micro = (f"{first['microbatch_size']} x {first['accumulation_steps']}"
             if first.get("accumulation_steps", 1) > 1 else "-")
    if b is None:
      rows.append(f"| {k} | {micro} | - | not reached | - | {fit_s} | - | {tried} |")
    else:
      rows.append(f"| {k} | {micro} | {b['learning_rate']:.3g} | {b['steps']} | "
                  f"{b['steps'] * k:,} | {fit_s} | {b['test_at_target']:.4g} | {tried} |")
  return "\n".join(rows)
