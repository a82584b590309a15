"""Byte counts as people write them (8GiB, 512MiB, 16GB) and as tables print them."""

from __future__ import annotations

import re

from sgdlab.errors import ConfigError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_BYTES_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")
_BUDGET_HELP = "bytes as an integer or with a unit, e.g. 8GiB, 512MiB, 16GB"


def parse_bytes(text: str | int, field: str = "memory_budget") -> int:
  """Bytes from '8GiB', '512MiB', '16GB' (decimal units), '8G' (binary, as ulimit) or an int."""
  if isinstance(text, int) and not isinstance(text, bool):
    value = text
  else:
    match = _BYTES_RE.match(str(text))
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
      raise ConfigError(field, text, _BUDGET_HELP)
    value = int(float(match.group(1)) * _UNITS[unit])
  if value <= 0:
    raise ConfigError(field, text, f"a positive amount: {_BUDGET_HELP}")
  return value


def format_bytes(n: float) -> str:
  sign, n = ("-" if n < 0 else ""), abs(n)
  for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
    if n >= size:
      return f"{sign}{n / size:.2f} {unit}"
  return f"{sign}{int(n)} B"

