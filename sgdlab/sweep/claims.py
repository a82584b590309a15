"""Who runs a point: claim files, so that workers sharing a workdir never run one twice.

A worker runs a point only after claiming it; claims are files `.claim-<id>.<n>` in
the workdir, created exclusively, with a heartbeat (the file's mtime). See `claim`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

CLAIM_PREFIX = ".claim-"


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
