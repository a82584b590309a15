"""The one writer of what a run leaves behind, used by `sgdlab.train(workdir=...)` and sweeps.

One folder per member (a run alone is a population of one):

  config.json    the resolved config ("auto" fields decided), written once, at the start
  status.json    running (with the latest epoch on disk) | done | diverged | failed
  epochs.csv     the per-epoch table, replaced whole after every epoch
  history.json   per-epoch and per-step curves, diagnostics, at the end
  params.npz     the final parameters, at the end
  curves.png     loss and accuracy per epoch, at the end

and, with log_dirs, TensorBoard events as it trains (`sgdlab.results.tensorboard`). The
Writer is the loop's on_epoch callback; `finish` writes every member's files first and
the statuses last, so "done" in any folder means every member's files are complete.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from sgdlab.results import files, tensorboard
from sgdlab.results.history import History


class Writer:
  """Writes members' folders: start, then one call per epoch row, then finish or fail.

  With no dirs it writes TensorBoard events alone; enabled=False (a process other than
  the writer in a multi-host run) writes nothing.
  """

  def __init__(self, dirs: Sequence[str], *, log_dirs: Sequence[str] | None = None,
               status: Mapping[str, Any] | None = None, plot: bool = True,
               enabled: bool = True, members: Sequence[int] | None = None):
    self.dirs, self.log_dirs = list(dirs), list(log_dirs) if log_dirs else None
    # The run's members these folders are for (all, unless a sweep trains some again
    # only to resume the others): run member -> position here.
    self._position = {m: i for i, m in enumerate(
        range(max(len(self.dirs), len(self.log_dirs or []))) if members is None else members)}
    self.status, self.plot, self.enabled = dict(status or {}), plot, enabled
    self._events: tensorboard.Events | None = None

  def start(self, configs: Sequence[Mapping[str, Any]]) -> None:
    """Each member's folder, its config.json and status running."""
    if not self.enabled:
      return
    for point_dir, config in zip(self.dirs, configs):
      os.makedirs(point_dir, exist_ok=True)
      files.write_json(os.path.join(point_dir, "config.json"), config)
      files.set_status(point_dir, "running", **self.status)

  def open(self, epoch_end_steps: Sequence[int]) -> "Writer":
    """The TensorBoard event files, once the run's steps are known: the global step at
    each epoch's end (`Resolved.epoch_end_steps`)."""
    self._events = tensorboard.Events(self.log_dirs if self.enabled else None,
                                      epoch_end_steps=epoch_end_steps)
    return self

  def __call__(self, member: int, history: History) -> None:
    """A new epoch row on disk at once. The whole csv is replaced (atomically) rather than
    appended to: a reader never sees half a row, and after a resume the rows past the
    checkpoint are gone."""
    if not self.enabled or member not in self._position:
      return
    member = self._position[member]
    if self.dirs:
      point_dir = self.dirs[member]
      files.write_atomic(os.path.join(point_dir, "epochs.csv"), history.epochs_csv())
      files.set_status(point_dir, "running", epoch=history.num_epochs, **self.status)
    if self._events is not None:
      self._events(member, history)

  def finish(self, histories: Sequence[History]) -> None:
    """Every member's files, then every status: done or diverged."""
    histories = [histories[m] for m in self._position]
    if self._events is not None:
      self._events.finish(histories)
    if not self.enabled:
      return
    for point_dir, history in zip(self.dirs, histories):
      files.write_atomic(os.path.join(point_dir, "history.json"), history.to_json())
      files.write_atomic(os.path.join(point_dir, "epochs.csv"), history.epochs_csv())
      if history.state is not None:
        files.save_params(point_dir, history.state.params)
      if self.plot:
        history.plot(os.path.join(point_dir, "curves.png"))
    for point_dir, history in zip(self.dirs, histories):
      files.set_status(point_dir, "diverged" if history.diverged else "done",
                       diverged=history.diverged, **self.status)

  def fail(self, error: str) -> None:
    """Every member failed with `error` (one line)."""
    if self.enabled:
      for point_dir in self.dirs:
        files.set_status(point_dir, "failed", error=error, **self.status)

  def close(self) -> None:
    if self._events is not None:
      self._events.close()

  def __enter__(self) -> "Writer":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()
