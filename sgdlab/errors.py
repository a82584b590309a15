"""The errors users see for bad input: one line naming the field, the value and what is valid.

Every entry point turns them into that line on stderr and exit code 2 (`sgdlab.cli`),
and they are raised before anything compiles or is written.
"""

from __future__ import annotations

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
  """Why `path` could not be made and written to, or None if it could; checked by
  walking up to the nearest thing that exists, without making anything."""
  existing = os.path.abspath(path)
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    return f"{existing} is not a folder"
  if not os.access(existing, os.W_OK | os.X_OK):
    return f"{existing} is not writable"
  return None
