"""The results folder: one folder per point, every file written atomically.

<workdir>/
  <point id>/
    config.json    the resolved config of the run
    status.json    {"status": running | done | diverged | failed, "error": ..., "worker": ...}
    history.json   per-epoch and per-step curves, diagnostics (sgdlab.history.History)
    epochs.csv     the per-epoch table, for spreadsheets
    params.npz     the final parameters ("dense0/kernel" -> array)
    curves.png     loss and accuracy per epoch
    checkpoints/   orbax checkpoints while the run is unfinished (sgdlab.checkpoint)
  .claim-<point id>.<n>   who is running a point (see `claim`); gone once it is settled
  summary.md, overlay.png, sweep.png   rebuilt from the point folders (sgdlab.summary)

A reader never sees half a file: each is written beside its target and renamed. A point
folder is written only by the worker holding its claim, so workers sharing a workdir
never write the same file (the summary is rebuilt under a lock).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import io
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from typing import Any, Iterator

import numpy as np

from sgdlab import config as config_lib
from sgdlab.history import History

STATUSES = ("running", "done", "diverged", "failed")
FINISHED = ("done", "diverged")
CLAIM_PREFIX = ".claim-"


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


def save_run(point_dir: str, history: History, *, plot: bool = True,
             **status_extra: Any) -> None:
  """Write a finished run's files; status last, so "done" means everything is there."""
  os.makedirs(point_dir, exist_ok=True)
  write_json(os.path.join(point_dir, "config.json"), history.config)
  write_atomic(os.path.join(point_dir, "history.json"), history.to_json())
  write_atomic(os.path.join(point_dir, "epochs.csv"), history.epochs_csv())
  if history.state is not None:
    save_params(point_dir, history.state.params)
  if plot:
    history.plot(os.path.join(point_dir, "curves.png"))
  set_status(point_dir, "diverged" if history.diverged else "done",
             diverged=history.diverged, **status_extra)


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


# Fields that do not change a run's results: a stored point may differ in them.
NON_RESULT_FIELDS = ("name", "sweep", "checkpoint_every_epochs", "population")


def config_difference(stored: dict[str, Any], wanted: dict[str, Any]) -> str | None:
  """The first field where a stored config.json and a point's config differ, or None.

  Fields the point leaves to be resolved at run time ("auto") match any stored value.
  """
  normal = lambda d: config_lib.flatten(json.loads(json.dumps(d, default=str)))
  a, b = normal(stored), normal(wanted)
  for key in sorted(set(a) | set(b)):
    if key.split(".")[0] in NON_RESULT_FIELDS or b.get(key) == "auto":
      continue
    if a.get(key, "<absent>") != b.get(key, "<absent>"):
      return f"{key}: stored {a.get(key, '<absent>')!r}, this sweep {b.get(key, '<absent>')!r}"
  return None


# ---------------------------------------------------------------------------- claims


@dataclasses.dataclass(frozen=True)
class Owner:
  """Who runs a point: a worker of a sweep, as one process on one host."""

  worker: str  # e.g. "1/4"
  host: str = dataclasses.field(default_factory=socket.gethostname)
  pid: int = dataclasses.field(default_factory=os.getpid)
  token: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])

  def describe(self) -> str:
    return f"worker {self.worker} (pid {self.pid} on {self.host})"


class Claim:
  """A held claim on a point; a thread keeps its heartbeat (the file's mtime) fresh."""

  def __init__(self, path: str, heartbeat_seconds: float):
    self.path = path
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, args=(heartbeat_seconds,), daemon=True)
    self._thread.start()

  def _beat(self, seconds: float) -> None:
    while not self._stop.wait(seconds):
      with contextlib.suppress(OSError):
        os.utime(self.path)

  def release(self) -> None:
    """Drop the claim and the stale ones it replaced (after the status is written)."""
    self._stop.set()
    self._thread.join()
    base, generation = self.path.rsplit(".", 1)
    for g in range(int(generation), -1, -1):
      with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{base}.{g}")


@dataclasses.dataclass(frozen=True)
class Holder:
  """Someone else's claim on a point, as read from its file."""

  path: str
  info: dict[str, Any]
  age: float  # seconds since its last heartbeat

  def describe(self) -> str:
    i = self.info
    return (f"worker {i.get('worker', '?')} (pid {i.get('pid', '?')} on {i.get('host', '?')}, "
            f"heartbeat {self.age:.0f}s ago)")


def claim(workdir: str, point_id: str, owner: Owner, *, stale_after: float = 600.0
          ) -> Claim | Holder:
  """Try to become the one worker that runs `point_id`; returns a Claim, or the live Holder.

  The rule: claims are files `.claim-<id>.<n>` created with O_CREAT | O_EXCL, so
  exactly one worker wins each generation n. The newest generation is the claim. It is
  stale when its process is gone (same host, pid not running) or its heartbeat, the
  file's mtime refreshed every stale_after / 10 s while the point runs, is older
  than stale_after seconds (another host: a killed or preempted worker). A stale
  claim is replaced by creating generation n + 1, which again only one worker wins.
  """
  directory = workdir
  for _ in range(100):  # bounded: each pass either wins, finds a live holder, or races
    generations = _generations(directory, point_id)
    if generations:
      newest = _claim_path(directory, point_id, generations[-1])
      holder = _read_holder(newest)
      if holder is None:
        continue  # released between listing and reading: look again
      if not _is_stale(holder, stale_after):
        return holder
      generation = generations[-1] + 1
    else:
      generation = 0
    path = _claim_path(directory, point_id, generation)
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      continue  # another worker won this generation: read its claim
    with os.fdopen(fd, "w") as f:
      json.dump(dict(dataclasses.asdict(owner), time=time.time()), f)
    return Claim(path, heartbeat_seconds=max(stale_after / 10, 0.05))
  raise RuntimeError(f"could not settle the claim on {point_id} in {directory}")


def holder(workdir: str, point_id: str) -> Holder | None:
  """The newest claim on a point, live or stale; None if unclaimed."""
  generations = _generations(workdir, point_id)
  if not generations:
    return None
  return _read_holder(_claim_path(workdir, point_id, generations[-1]))


def is_stale(h: Holder, stale_after: float) -> bool:
  return _is_stale(h, stale_after)


def _claim_path(directory: str, point_id: str, generation: int) -> str:
  return os.path.join(directory, f"{CLAIM_PREFIX}{point_id}.{generation}")


def _generations(directory: str, point_id: str) -> list[int]:
  try:
    names = os.listdir(directory)
  except FileNotFoundError:
    return []
  prefix = f"{CLAIM_PREFIX}{point_id}."
  return sorted(int(n[len(prefix):]) for n in names
                if n.startswith(prefix) and n[len(prefix):].isdigit())


def _read_holder(path: str) -> Holder | None:
  try:
    age = time.time() - os.stat(path).st_mtime
    with open(path) as f:
      text = f.read()
  except FileNotFoundError:
    return None
  try:
    info = json.loads(text)
  except ValueError:
    info = {}  # created, not yet written: judged by its heartbeat alone
  return Holder(path, info if isinstance(info, dict) else {}, max(age, 0.0))


def _is_stale(h: Holder, stale_after: float) -> bool:
  if h.info.get("host") == socket.gethostname() and isinstance(h.info.get("pid"), int):
    if not _pid_alive(h.info["pid"]):
      return True
  return h.age > stale_after


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except OSError as e:
    return e.errno == errno.EPERM  # exists, owned by someone else
  # A zombie (killed, not yet reaped) still answers kill(0); it is gone for us.
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return True


@contextlib.contextmanager
def locked(workdir: str, name: str = ".summary.lock") -> Iterator[None]:
  """An exclusive lock on a file in the workdir (for writes that several workers make)."""
  with open(os.path.join(workdir, name), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
