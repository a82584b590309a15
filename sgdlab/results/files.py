"""The results folder's files, each written atomically; `sgdlab.results.writer` writes them.

<workdir>/
  <point id>/
    config.json    the resolved config of the run
    status.json    {"status": running | done | diverged | failed, "error": ..., "worker": ...}
    history.json   per-epoch and per-step curves, diagnostics (sgdlab.history.History)
    epochs.csv     the per-epoch table, for spreadsheets
    params.npz     the final parameters ("dense0/kernel" -> array)
    curves.png     loss and accuracy per epoch
    checkpoints/   orbax checkpoints while the run is unfinished (sgdlab.train.checkpoint)
  .claim-<point id>.<n>   who is running a point (sgdlab.sweep.claims); gone once settled
  summary.md, overlay.png, sweep.png   rebuilt from the point folders (sgdlab.results.summary)

A reader never sees half a file: each is written beside its target and renamed. A point
folder is written only by the worker holding its claim, so workers sharing a workdir
never write the same file (the summary is rebuilt under a lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import tempfile
from typing import Any, Iterator

import numpy as np

from sgdlab import config as config_lib
from sgdlab.results.history import History

STATUSES = ("running", "done", "diverged", "failed")
FINISHED = ("done", "diverged")


def write_atomic(path: str | os.PathLike, text: str | bytes) -> None:
  directory = os.path.dirname(os.fspath(path)) or "."
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
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


def load_history(point_dir: str) -> History:
  with open(os.path.join(point_dir, "history.json")) as f:
    return History.from_json(f.read())


def save_params(point_dir: str, params: Any) -> None:
  """params.npz: one array per leaf, keyed by its path ("dense0/kernel")."""
  import jax  # only writers need it
  flat = {"/".join(_key_name(k) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  buffer = io.BytesIO()
  np.savez(buffer, **flat)
  write_atomic(os.path.join(point_dir, "params.npz"), buffer.getvalue())


def load_params(point_dir: str) -> dict[str, np.ndarray]:
  with np.load(os.path.join(point_dir, "params.npz")) as f:
    return {k: f[k] for k in f.files}


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def point_dirs(workdir: str) -> list[str]:
  """Folders of the workdir that hold a point (a config.json), sorted by name."""
  try:
    names = sorted(os.listdir(workdir))
  except OSError:
    return []
  return [os.path.join(workdir, n) for n in names
          if not n.startswith(".") and os.path.isfile(os.path.join(workdir, n, "config.json"))]


def config_difference(stored: dict[str, Any], wanted: dict[str, Any]) -> str | None:
  """The first field where a stored config.json and a point's config differ, or None.

  Fields the point leaves to be resolved at run time ("auto") match any stored value.
  """
  normal = lambda d: config_lib.flatten(json.loads(json.dumps(d, default=str)))
  a, b = normal(stored), normal(wanted)
  for key in sorted(set(a) | set(b)):
    if key.split(".")[0] in config_lib.NON_RESULT_FIELDS or b.get(key) == "auto":
      continue
    if a.get(key, "<absent>") != b.get(key, "<absent>"):
      return f"{key}: stored {a.get(key, '<absent>')!r}, this sweep {b.get(key, '<absent>')!r}"
  return None


@contextlib.contextmanager
def locked(workdir: str, name: str = ".summary.lock") -> Iterator[None]:
  """An exclusive lock on a file in the workdir (for writes that several workers make)."""
  with open(os.path.join(workdir, name), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
