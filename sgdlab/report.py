r"""Rebuild a sweep's summary from its results folder, while it runs or after.

  python -m sgdlab.report --workdir=runs/grid

Reads every point folder (sgdlab.results.files) and rewrites summary.md (the table,
failed and unfinished points beneath it), overlay.png and sweep.png, then prints the
table. Needs no config and compiles nothing; a workdir without any point is a usage
error (exit 2).
"""

from __future__ import annotations

import os

from absl import flags

from sgdlab import cli
from sgdlab.results import summary
from sgdlab.results import files

_WORKDIR = flags.DEFINE_string("workdir", None, "Results folder written by sgdlab.launch.")
_TITLE = flags.DEFINE_string("title", "", "Figure title; default the workdir's name.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  workdir = _WORKDIR.value
  if not workdir:
    cli.fail("--workdir is required, e.g. --workdir=runs/grid")
  if not os.path.isdir(workdir):
    cli.fail(f"--workdir={workdir} is invalid: not a folder")
  if not files.point_dirs(workdir):
    cli.fail(f"--workdir={workdir} is invalid: it holds no point folders (no */config.json)")
  if not os.access(workdir, os.W_OK):
    cli.fail(f"--workdir={workdir} is invalid: not writable")
  print(summary.rebuild(workdir, title=_TITLE.value))


if __name__ == "__main__":
  cli.main(main)
