"""The one error type users see for bad input: it names the field, the value and what is valid."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
  """A config value that cannot run; raised before anything compiles or is written."""

  def __init__(self, field: str, value: Any, valid: str):
    self.field = field
    self.value = value
    self.valid = valid
    super().__init__(f"config.{field}={value!r} is invalid: {valid}")
