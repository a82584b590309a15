"""An experiment's summary: the table of final figures and the overlay of all curves."""

from __future__ import annotations

import math
import os
from typing import Sequence

from sgdlab.history import History

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


def table(histories: Sequence[History], failed: Sequence[tuple[str, str]] = ()) -> str:
  """Markdown table, one row per run; failed runs (name, error) are listed beneath."""
  lines = ["| " + " | ".join(h for h, _ in _COLUMNS) + " |",
           "|" + "|".join("---" for _ in _COLUMNS) + "|"]
  for h in histories:
    row = h.summary()
    lines.append("| " + " | ".join(_cell(k, row[k]) for _, k in _COLUMNS) + " |")
  notes = [f"- {h.name}: {note}" for h in histories for note in h.diagnostics]
  notes += [f"- {name}: FAILED: {error}" for name, error in failed]
  if notes:
    lines += ["", "Diagnostics:", *notes]
  return "\n".join(lines) + "\n"


def write(workdir: str, histories: Sequence[History], failed: Sequence[tuple[str, str]] = (),
          title: str = "") -> str:
  """summary.md and overlay.png in the workdir; returns the table."""
  from sgdlab import plots, store
  text = table(histories, failed)
  store.write_atomic(os.path.join(workdir, "summary.md"),
                     (f"# {title}\n\n" if title else "") + text)
  if histories:
    plots.overlay_figure(histories, os.path.join(workdir, "overlay.png"), title=title)
  return text
