"""A worker's progress through its share of a sweep, through tqdm.

On a terminal: a bar over this worker's points, with the log lines printed above it.
Elsewhere (cluster logs): each 'point i/N' line ends in what is left and tqdm's ETA.
Both count only points trained here, so skipped ones do not make the ETA optimistic.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from absl import logging
from tqdm import tqdm

from sgdlab.sweep.workers import Worker


def duration(seconds: float) -> str:
  """'00:42', '12:05', '1:02:03'."""
  return tqdm.format_interval(seconds)


class Progress:
  """'point i/N (worker w/n)' prefixes, and 'N left, ETA ...' once a point is trained.

  Inside `with`, on a terminal, also the bar: points skipped or settled elsewhere leave
  its total, and absl's log lines go above it instead of through it.
  """

  def __init__(self, total: int, share: int, worker: Worker, stream: TextIO | None = None):
    self.total, self.left, self.worker = total, share, worker
    self.trained, self.seconds = 0, 0.0
    self.stream = sys.stderr if stream is None else stream
    self.bar: tqdm | None = None

  def __enter__(self) -> "Progress":
    if getattr(self.stream, "isatty", lambda: False)():
      self.bar = tqdm(total=self.left, desc=f"worker {self.worker}", unit="point",
                      file=self.stream, dynamic_ncols=True)
      handler = logging.get_absl_handler()
      handle = handler.handle  # (it hands records on, not through its own emit)

      def above_the_bar(record):
        with tqdm.external_write_mode(file=self.stream):
          return handle(record)
      handler.handle = above_the_bar
    return self

  def __exit__(self, *exc: Any) -> None:
    if self.bar is not None:
      del logging.get_absl_handler().handle  # the class's own again
      self.bar.close()
      self.bar = None

  def prefix(self, p: Any) -> str:
    """For a resolved point (`runner.ResolvedPoint`)."""
    return f"point {p.point.index + 1}/{self.total} (worker {self.worker})"

  def settled(self, seconds: float | None = None) -> str:
    """One of this worker's points is settled; seconds if it was trained here."""
    self.left = max(self.left - 1, 0)
    if seconds is not None:
      self.trained += 1
      self.seconds += seconds
    if self.bar is not None and seconds is None:
      self.bar.total = max(self.bar.total - 1, self.bar.n)
      self.bar.refresh()
    elif self.bar is not None:
      self.bar.update(1)
    if not self.trained:
      return f"{self.left} left"
    eta = tqdm.format_meter(self.trained, self.trained + self.left, self.seconds,
                            unit="point", bar_format="ETA {remaining} at {rate_inv_fmt}")
    return f"{self.left} left, " + " ".join(eta.split())  # tqdm pads the rate
