"""The errors users see for bad input: one line naming the field, the value and what is valid.

Every entry point turns them into that line on stderr and exit code 2 (`sgdlab.cli`),
and they are raised before anything compiles or is written.
"""

from __future__ import annotations

from typing import Any

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
