"""Runs one pytest file as a Bazel py_test: `pytest_main.py tests/test_x.py [pytest args]`.

Bazel runs a test as a program and reads its exit code; this wrapper hands the file to
pytest with the same selection as the default `python -m pytest` run (slow tests left
out), keeps pytest's and matplotlib's files under TEST_TMPDIR (the sandbox makes HOME
read-only), and gives Bazel a JUnit XML.
"""

from __future__ import annotations

import os
import sys

# Python puts this script's real directory (the source tree's tests/, behind Bazel's
# runfiles symlink) first on sys.path; drop it so conftest and sgdlab come from runfiles.
if sys.path and os.path.realpath(sys.path[0]) == os.path.dirname(os.path.realpath(__file__)):
  del sys.path[0]

import pytest  # noqa: E402

# pytest's exit code when every test in the file was deselected (e.g. all marked slow).
_NO_TESTS_COLLECTED = 5


def pytest_args(argv: list[str], environ: dict[str, str]) -> list[str]:
  """pytest's command line for the test file in argv[0] and extra arguments after it."""
  if not argv:
    raise SystemExit("usage: pytest_main.py tests/test_x.py [pytest args]")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  # One process: Bazel already runs one target per file, side by side.
  args = [argv[0], "-q", "-ra", "-m", "not slow", f"--rootdir={root}",
          "-p", "no:cacheprovider", "-n", "0"]
  if "TEST_TMPDIR" in environ:
    args.append("--basetemp=" + os.path.join(environ["TEST_TMPDIR"], "pytest"))
  if "XML_OUTPUT_FILE" in environ:
    args.append("--junitxml=" + environ["XML_OUTPUT_FILE"])
  return args + argv[1:]


def main() -> int:
  if "TEST_TMPDIR" in os.environ:  # child processes inherit it
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(os.environ["TEST_TMPDIR"], "matplotlib"))
  code = pytest.main(pytest_args(sys.argv[1:], dict(os.environ)))
  return 0 if code == _NO_TESTS_COLLECTED else int(code)


if __name__ == "__main__":
  sys.exit(main())
