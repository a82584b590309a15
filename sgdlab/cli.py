"""What every command line shares: the --config and --workdir flags, and bad input as one line.

The contract for bad input, in every entry point: one line `error: <name>=<value> is
invalid: <what is valid>` on stderr, exit code 2, and nothing written. `parse_flags`
holds it for absl's flags, config files that are missing or do not import, and
`--config.x=y` overrides; `run` holds it for the ConfigErrors a library call raises.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Callable

from absl import app, flags
from ml_collections import config_flags

from sgdlab.errors import USAGE_EXIT_CODE, ConfigError

FLAGS = flags.FLAGS


def define_config_flags(default_config: str | None = None) -> None:
  """--config (a Python file with get_config()) and --workdir, once per process."""
  if "config" not in FLAGS:
    config_flags.DEFINE_config_file("config", default_config,
                                    "Experiment config file (get_config), then "
                                    "--config.field=value overrides.", lock_config=True)
  if "workdir" not in FLAGS:
    flags.DEFINE_string("workdir", "", "Results folder; default runs/<config file name>.")


def fail(message: str) -> None:
  """One line on stderr and exit code 2."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(USAGE_EXIT_CODE)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a bad flag, config file or override is a one-line usage error."""
  for arg in argv[1:]:
    if arg.startswith("--config=") and arg != "--config=":
      path = arg[len("--config="):].split(":")[0]
      if not os.path.isfile(path):
        fail(f"--config={path} is invalid: no such file")
  # Importing the config file must not write a __pycache__ beside the user's file (a
  # read-only or Bazel-tracked folder gains a stray entry).
  writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
  try:
    remaining = FLAGS(argv)
  except SyntaxError as e:
    fail(f"--config={e.filename} is invalid: syntax error at line {e.lineno}: {e.msg}")
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError, OSError,
          ImportError, NameError) as e:
    cause = e.__cause__ or e.__context__ or e
    if isinstance(cause, SyntaxError):
      fail(f"--config={cause.filename} is invalid: syntax error at line {cause.lineno}: "
           f"{cause.msg}")
    text = str(cause).strip().splitlines()[-1] if str(cause).strip() else repr(cause)
    if isinstance(cause, (KeyError, AttributeError)):
      text = _unknown_field(argv, cause) or text
    fail(text)
  finally:
    sys.dont_write_bytecode = writes_bytecode
  return remaining


def _unknown_field(argv: list[str], cause: Exception) -> str | None:
  """'--config.a.b=v is invalid: ...' for the override naming a field the config lacks."""
  found = re.search(r"'([^'\\]+)", str(cause.args[0] if cause.args else ""))
  missing = found.group(1) if found else ""
  for arg in argv[1:]:
    name, _, value = arg.partition("=")
    if name.startswith("--config.") and missing and missing in name.split(".")[1:]:
      hint = " (new sweep axes go in the config file)" if name.startswith("--config.sweep.") else ""
      return f"{name}={value} is invalid: the config has no field '{missing}'{hint}"
  return None


def config() -> Any:
  """The parsed --config (a ConfigDict), or a usage error when it is missing."""
  value = FLAGS.config
  if value is None:
    fail("--config is required, e.g. --config=experiments/classic_batch_size.py")
  return value


def overrides(argv: list[str] | None = None) -> dict[str, str]:
  """The --config.<field>=<value> overrides of the command line: dotted name -> value."""
  argv = sys.argv if argv is None else argv
  out = {}
  for arg in argv[1:]:
    if arg.startswith("--config."):
      name, _, value = arg[len("--config."):].partition("=")
      out[name] = value
  return out


def workdir() -> str:
  """--workdir, or runs/<config file name>."""
  if FLAGS.workdir:
    return FLAGS.workdir
  name = os.path.splitext(os.path.basename(
      config_flags.get_config_filename(FLAGS["config"]).split(":")[0]))[0]
  return os.path.join("runs", name or "experiment")


def call(fn: Callable[[], Any]) -> Any:
  """fn(), with a ConfigError (raised before anything is written) as a usage error."""
  try:
    return fn()
  except ConfigError as e:
    fail(str(e))


def main(fn: Callable[[list[str]], None]) -> None:
  """Run an entry point's main under absl, with the one-line flag errors."""
  app.run(fn, flags_parser=parse_flags)
