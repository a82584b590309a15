"""The results folder: one folder per point, every file written atomically.

<workdir>/<point id>/
  config.json    the resolved config of the run
  status.json    {"status": running | done | diverged | failed, "error": ...}
  history.json   per-epoch and per-step curves, diagnostics (sgdlab.history.History)
  epochs.csv     the per-epoch table, for spreadsheets
  curves.png     loss and accuracy per epoch
A reader never sees half a file: each is written beside its target and renamed.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from sgdlab.history import History

STATUSES = ("running", "done", "diverged", "failed")


def write_atomic(path: str | os.PathLike, text: str) -> None:
  directory = os.path.dirname(os.fspath(path)) or "."
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
  write_atomic(path, json.dumps(obj, indent=1, sort_keys=True, default=str))


def read_json(path: str | os.PathLike) -> Any:
  with open(path) as f:
    return json.load(f)


def set_status(point_dir: str, status: str, **extra: Any) -> None:
  assert status in STATUSES, status
  write_json(os.path.join(point_dir, "status.json"), dict(status=status, **extra))


def status(point_dir: str) -> dict[str, Any]:
  """{"status": ...} of a point folder; "missing" when it has none (or it is unreadable)."""
  try:
    return read_json(os.path.join(point_dir, "status.json"))
  except (OSError, ValueError):
    return dict(status="missing")


def save_run(point_dir: str, history: History, *, plot: bool = True) -> None:
  """Write a finished run's files; status last, so "done" means everything is there."""
  os.makedirs(point_dir, exist_ok=True)
  write_json(os.path.join(point_dir, "config.json"), history.config)
  write_atomic(os.path.join(point_dir, "history.json"), history.to_json())
  write_atomic(os.path.join(point_dir, "epochs.csv"), history.epochs_csv())
  if plot:
    history.plot(os.path.join(point_dir, "curves.png"))
  set_status(point_dir, "diverged" if history.diverged else "done",
             diverged=history.diverged)


def load_history(point_dir: str) -> History:
  with open(os.path.join(point_dir, "history.json")) as f:
    return History.from_json(f.read())
