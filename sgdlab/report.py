r"""Rebuild a sweep's summary from its results folder, while it runs or after.

  python -m sgdlab.report --workdir=runs/grid

Reads every point folder (sgdlab.store) and rewrites summary.md (the table, failed and
unfinished points beneath it), overlay.png (all curves) and sweep.png (test accuracy
vs k per lr, the best lr per k, loss curves per k), then prints the table. Needs no
config and compiles nothing; a workdir without any point is a usage error (exit 2).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from sgdlab import store, summary

_WORKDIR = flags.DEFINE_string("workdir", None, "Results folder written by sgdlab.launch.")
_TITLE = flags.DEFINE_string("title", "", "Figure title; default the workdir's name.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}")
  workdir = _WORKDIR.value
  if not workdir:
    _fail("--workdir is required, e.g. --workdir=runs/grid")
  if not os.path.isdir(workdir):
    _fail(f"--workdir={workdir} is invalid: not a folder")
  if not store.point_dirs(workdir):
    _fail(f"--workdir={workdir} is invalid: it holds no point folders (no */config.json)")
  if not os.access(workdir, os.W_OK):
    _fail(f"--workdir={workdir} is invalid: not writable")
  print(summary.rebuild(workdir, title=_TITLE.value))


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


if __name__ == "__main__":
  app.run(main)
