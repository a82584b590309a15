"""An experiment's summary: the table of final figures, the overlay and the sweep figure.

`rebuild(workdir)` reads every point folder of a results folder and rewrites the
summary; the launcher calls it when a worker finishes and `python -m sgdlab.report`
calls it on demand. It runs under a lock and writes atomically, so workers finishing
together leave the summary of the most complete set of folders, never a torn file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Sequence

import numpy as np

from sgdlab.config import fields
from sgdlab.results import files, seed_stats
from sgdlab.results.history import History

_COLUMNS = (("run", "run"), ("k", "batch_size"), ("lr", "learning_rate"), ("decay", "lr_decay"),
            ("train acc", "train_accuracy"), ("test acc", "test_accuracy"),
            ("final loss", "train_loss"), ("monotone", "monotone"), ("diverged", "diverged"),
            ("epochs", "epochs"), ("wall s", "wall_time"), ("examples/s", "examples_per_sec"))


def _cell(key: str, value) -> str:
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, float):
    if math.isnan(value):
      return "-"
    if key in ("train_accuracy", "test_accuracy"):
      return f"{value:.4f}"
    if key == "examples_per_sec":
      return f"{value:,.0f}"
    if key == "wall_time":
      return f"{value:.1f}"
    return f"{value:.4g}"
  return str(value)


def seed_groups(histories: Sequence[History]) -> list[list[History]]:
  """Runs that differ only in their seed, in first-seen order: one row of the table."""
  groups: dict[str, list[History]] = {}
  for h in histories:
    key = {k: v for k, v in fields.result_fields(h.config).items() if k != "seed"}
    groups.setdefault(json.dumps(key, sort_keys=True, default=str), []).append(h)
  return list(groups.values())


_CONFIG_KEYS = ("run", "batch_size", "learning_rate", "lr_decay")
# A diverged seed's loss and accuracies are not figures of training: they stay out.
_TRAINED_KEYS = ("train_accuracy", "test_accuracy", "train_loss", "sharpness")


def _group_cell(key: str, rows: list[dict]) -> str:
  """One seed: the value. Several: a yes/no column as a rate with its 95% Wilson interval,
  a figure as the median and interquartile range (the loss and accuracies over the seeds
  that did not diverge)."""
  values = [r[key] for r in rows]
  if len(rows) == 1 or key in _CONFIG_KEYS or key == "seeds":
    return _cell(key, values[0])
  if isinstance(values[0], bool):
    return seed_stats.rate_cell(values)
  if key in _TRAINED_KEYS:
    values = [r[key] for r in rows if not r["diverged"]]
  stats = seed_stats.median_iqr([float(v) for v in values])
  if stats is None:
    return "-"
  med, q1, q3 = (v if key != "epochs" else int(round(v)) for v in stats)
  if q1 == q3:
    return _cell(key, med)
  return f"{_cell(key, med)} [{_cell(key, q1)}-{_cell(key, q3)}]"


def table(histories: Sequence[History], failed: Sequence[tuple[str, str]] = (),
          unfinished: Sequence[tuple[str, str]] = ()) -> str:
  """Markdown table, one row per run, or per group of runs that differ only in the seed:
  there the rates of divergence and of a loss that rose or diverged (with 95% Wilson
  intervals) and the median [interquartile range] of each figure. Failed runs (name,
  error) and unfinished ones (name, status) are listed beneath."""
  groups = seed_groups(histories)
  seeded = any(len(g) > 1 for g in groups)
  columns = _COLUMNS[:4] + ((("seeds", "seeds"),) if seeded else ()) + _COLUMNS[4:]
  if any("hessian_eig_1" in h.epochs for h in histories):  # config.sharpness_batches
    at = [k for _, k in columns].index("train_loss") + 1
    columns = columns[:at] + (("lambda_max", "sharpness"),) + columns[at:]
  if seeded:
    columns = tuple(("not monotone", "not_monotone") if k == "monotone" else (h, k)
                    for h, k in columns)
  lines = ["| " + " | ".join(h for h, _ in columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
  for group in groups:
    # A seed that diverged within its first epoch has one epoch's loss: it counts as rising.
    rows = [dict(s, seeds=len(group), not_monotone=s["diverged"] or not s["monotone"])
            for s in (h.summary() for h in group)]
    lines.append("| " + " | ".join(_group_cell(k, rows) for _, k in columns) + " |")
  label = lambda h, g: (f"{h.name} (seed {h.config.get('seed')})" if len(g) > 1 else h.name)
  notes = [f"- {label(h, g)}: {note}" for g in groups for h in g for note in h.diagnostics]
  notes += [f"- {name}: FAILED: {error}" for name, error in failed]
  notes += [f"- {name}: not finished ({state})" for name, state in unfinished]
  if notes:
    lines += ["", "Diagnostics:", *notes]
  return "\n".join(lines) + "\n"


def write(workdir: str, histories: Sequence[History], failed: Sequence[tuple[str, str]] = (),
          title: str = "", unfinished: Sequence[tuple[str, str]] = ()) -> str:
  """summary.md and overlay.png in the workdir; returns the table."""
  from sgdlab.results import figures
  text = table(histories, failed, unfinished)
  files.write_atomic(os.path.join(workdir, "summary.md"),
                     (f"# {title}\n\n" if title else "") + text)
  if histories:
    figures.overlay_figure(histories, os.path.join(workdir, "overlay.png"), title=title)
  return text


@dataclasses.dataclass
class FolderResults:
  """What a results folder holds: finished runs, failed points, unfinished points."""

  histories: list[History]
  failed: list[tuple[str, str]]  # (run name, error)
  unfinished: list[tuple[str, str]]  # (run name, "running, epoch n written" | "missing")


def _sort_key(h: History):
  c = h.config
  k = c.get("batch_size")
  return (-(k if isinstance(k, (int, float)) else 0), -float(c.get("learning_rate") or 0),
          float(c.get("lr_decay") or 0), c.get("seed") or 0, h.name)


def read_results(workdir: str) -> FolderResults:
  """Every point folder of `workdir`, finished runs ordered by k, then lr (both falling)."""
  from sgdlab import config as config_lib
  histories, failed, unfinished = [], [], []
  for point_dir in files.point_dirs(workdir):
    state = files.status(point_dir)
    label = os.path.basename(point_dir)
    try:
      label = config_lib.run_name(config_lib.from_dict(files.read_json(
          os.path.join(point_dir, "config.json"))))
    except Exception:  # an unreadable config still gets a line, under its folder name
      pass
    if state["status"] in files.FINISHED:
      try:
        histories.append(files.load_history(point_dir))
      except (OSError, ValueError) as e:
        failed.append((label, f"unreadable history.json ({e})"))
    elif state["status"] == "failed":
      failed.append((label, state.get("error", "")))
    else:  # a running point names its latest epoch on disk (its epochs.csv)
      epoch = state.get("epoch")
      unfinished.append((label, state["status"] + (f", epoch {epoch} written"
                                                   if epoch else "")))
  histories.sort(key=_sort_key)
  return FolderResults(histories, failed, unfinished)


def rebuild(workdir: str, title: str = "") -> str:
  """Rewrite summary.md, overlay.png and sweep.png from the point folders; returns the table."""
  from sgdlab.results import sweep_figures
  title = title or os.path.basename(os.path.abspath(workdir))
  with files.locked(workdir):
    found = read_results(workdir)
    text = write(workdir, found.histories, found.failed, title=title,
                 unfinished=found.unfinished)
    if found.histories:
      sweep_figures.sweep_figure(found.histories, os.path.join(workdir, "sweep.png"), title=title)
      _curvature_figures(workdir, found.histories, title)
      if any("batch_size" in h.epochs for h in found.histories):  # a batch_size_schedule
        from sgdlab.results import schedule_figures
        schedule_figures.accuracy_by_schedule(found.histories,
                                              os.path.join(workdir, "schedules.png"))
  return text


def _curvature_figures(workdir: str, histories: Sequence[History], title: str) -> None:
  """With config.sharpness_batches: sharpness_by_k.png where several k were measured,
  sharpness_over_steps.png where a run measured it at three epochs or more."""
  from sgdlab.results import curvature_figures
  measured = [h for h in histories if "hessian_eig_1" in h.epochs]
  if len({h.config.get("batch_size") for h in measured}) > 1:
    curvature_figures.sharpness_against_k(measured, os.path.join(workdir, "sharpness_by_k.png"))
  often = [h for h in measured if np.isfinite(h.epochs["hessian_eig_1"]).sum() >= 3]
  if often:
    curvature_figures.sharpness_over_steps(
        often, os.path.join(workdir, "sharpness_over_steps.png"), title=title)
