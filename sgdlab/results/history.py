"""What one run leaves behind: per-epoch and per-step curves, diagnostics, config."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from typing import Any

import numpy as np

from sgdlab.config import batch_schedule
from sgdlab.results import diagnostics

EPOCH_FIELDS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr",
                "wall_time", "examples_per_sec")


@dataclasses.dataclass
class History:
  """One run's record. `epochs` and `steps` are columns: name -> list, one entry a row.

  `state` holds the final TrainState when the run happened in this process (it is
  not serialized; checkpoints hold it).
  """

  name: str
  config: dict[str, Any]
  epochs: dict[str, list[float]] = dataclasses.field(default_factory=dict)
  steps: dict[str, list[float]] = dataclasses.field(default_factory=dict)
  # Evaluations at given steps (experiments): step, test_loss, test_accuracy, ...
  evals: dict[str, list[float]] = dataclasses.field(default_factory=dict)
  reached: int | None = None  # the step at which a Target was first reached
  diverged: str = ""  # "diverged at step t (epoch e)", or ""
  diagnostics: list[str] = dataclasses.field(default_factory=list)
  compile_time: float = 0.0
  state: Any = dataclasses.field(default=None, repr=False, compare=False)

  @property
  def num_epochs(self) -> int:
    return len(self.epochs.get("epoch", []))

  def final(self, key: str) -> float:
    values = self.epochs.get(key, [])
    return float(values[-1]) if values else math.nan

  @property
  def monotone(self) -> bool:
    return diagnostics.is_monotone(self.epochs)

  def summary(self) -> dict[str, Any]:
    """One row of the experiment's table."""
    wall = float(np.sum(self.epochs.get("wall_time", [])))
    n = sum(1 for _ in self.epochs.get("epoch", []))
    eps = self.epochs.get("examples_per_sec", [])
    k = self.config.get("batch_size")
    scheduled = (self.config.get("batch_size_schedule") or {}).get("sizes")
    return dict(run=self.name, batch_size=batch_schedule.label(self.config) if scheduled else k,
                learning_rate=self.config.get("learning_rate"),
                lr_decay=self.config.get("lr_decay"),
                train_accuracy=self.final("train_accuracy"),
                test_accuracy=self.final("test_accuracy"), train_loss=self.final("train_loss"),
                monotone=self.monotone, diverged=bool(self.diverged),
                sharpness=self.final("hessian_eig_1"), epochs=n, wall_time=wall,
                examples_per_sec=float(np.median(eps)) if eps else math.nan)

  def to_dict(self) -> dict[str, Any]:
    return dict(name=self.name, config=self.config, epochs=self.epochs, steps=self.steps,
                evals=self.evals, reached=self.reached, diverged=self.diverged,
                diagnostics=self.diagnostics, compile_time=self.compile_time)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "History":
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

  def to_json(self) -> str:
    return json.dumps(finite_or_null(self.to_dict()), indent=1)

  @classmethod
  def from_json(cls, text: str) -> "History":
    return cls.from_dict(_null_to_nan(json.loads(text)))

  def epochs_csv(self) -> str:
    keys = [k for k in EPOCH_FIELDS if k in self.epochs]
    keys += [k for k in self.epochs if k not in keys]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(keys)
    for row in zip(*(self.epochs[k] for k in keys)):
      writer.writerow(row)
    return out.getvalue()

  def plot(self, path: str | os.PathLike | None = None):
    """The classic pair of figures: loss and accuracy per epoch. Saved if path is given."""
    from sgdlab.results import figures  # matplotlib only when a figure is asked for
    return figures.history_figure(self, path)


def finite_or_null(x: Any) -> Any:
  """JSON has no NaN/Inf: write them as null (a diverged loss is worth keeping)."""
  if isinstance(x, dict):
    return {k: finite_or_null(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [finite_or_null(v) for v in x]
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  return x


def _null_to_nan(x: Any) -> Any:
  if isinstance(x, dict):
    return {k: (v if k in ("config",) else _null_to_nan(v)) for k, v in x.items()}
  if isinstance(x, list):
    return [math.nan if v is None else _null_to_nan(v) for v in x]
  return x
