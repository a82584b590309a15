"""The errors users see for bad input: one line naming the field, the value and what is valid.

Every entry point turns them into that line on stderr and exit code 2 (`sgdlab.cli`),
and they are raised before anything compiles or is written.
"""

from __future__ import annotations

import errno
import math
import numbers
import os
from typing import Any

import numpy as np

USAGE_EXIT_CODE = 2


class ConfigError(ValueError):
  """A config value that cannot run."""

  def __init__(self, field: str, value: Any, valid: str):
    self.field = field
    self.value = value
    self.valid = valid
    super().__init__(f"config.{field}={value!r} is invalid: {valid}")


class UsageError(ConfigError):
  """A bad flag, environment variable, file or folder, named the way the user gave it."""

  def __init__(self, name: str, value: Any, valid: str):
    ValueError.__init__(self, f"{name}={value} is invalid: {valid}")
    self.field, self.value, self.valid = name, value, valid


def check_number(field: str, value: Any, *, low: float | None = None,
                 high: float | None = None, strict: bool = False, high_open: bool = False,
                 integer: bool = False, what: str) -> None:
  """ConfigError unless value is a finite number (an integer if asked, never a bool) in
  [low, high]; strict excludes low, high_open excludes high. The one number check."""
  ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
  if ok:
    ok = math.isfinite(value) and (not integer or float(value).is_integer())
  if ok and low is not None:
    ok = value > low if strict else value >= low
  if ok and high is not None:
    ok = value < high if high_open else value <= high
  if not ok:
    raise ConfigError(field, value, what)


def unwritable(path: str) -> str | None:
  """Why a folder could not be made at `path` and written to, or None if it could.

  Checked by doing it: the missing folders are made, a file is written and removed, then
  the folders made are removed again, so a place that passes a permission check but
  cannot be created (under /proc, a read-only bind mount) fails here, before anything
  else is written, and a check that passes leaves nothing behind. Processes checking the
  same place at once (the hosts of a multi-host run) all pass: a folder another one made
  counts as made, one it has written into stays, and one it removed is looked at again.
  """
  path = os.path.abspath(path)
  for _ in range(3):  # a folder another process removed under us: look again
    why = _make_and_write(path)
    if why is None or not why.endswith(os.strerror(errno.ENOENT)):
      return why
  return why


def _make_and_write(path: str) -> str | None:
  made, at = [], path
  while not os.path.lexists(at):
    made.append(at)
    at = os.path.dirname(at)
  if not os.path.isdir(at):
    return f"{at} is not a folder"
  ours = []  # another process (a second host, a parallel sweep) may make or fill them too
  try:
    for folder in reversed(made):
      try:
        os.mkdir(folder)
        ours.append(folder)
      except FileExistsError:
        if not os.path.isdir(folder):
          raise
    probe = os.path.join(path, f".write-test-{os.getpid()}")
    with open(probe, "w"):
      pass
    os.unlink(probe)
  except OSError as e:
    return f"{e.filename or path}: {e.strerror}"
  finally:
    for folder in reversed(ours):
      try:
        os.rmdir(folder)
      except FileNotFoundError:
        continue
      except OSError:  # not empty: someone else writes there now, so it stays
        break
  return None
