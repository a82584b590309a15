"""`python tests/check_wheel.py dist/sgdlab-*.whl`: the wheel holds every module of the tree.

CI builds a non-editable wheel and runs this, so a subpackage that setuptools does not
find (a folder without __init__.py) fails CI instead of failing users' installs.
"""

from __future__ import annotations

import os
import sys
import zipfile


def missing_modules(wheel: str, root: str = "sgdlab") -> list[str]:
  names = set(zipfile.ZipFile(wheel).namelist())
  want = {os.path.join(d, f).replace(os.sep, "/") for d, _, files in os.walk(root)
          for f in files if f.endswith(".py")}
  return sorted(want - names)


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print("usage: check_wheel.py path/to/sgdlab-*.whl", file=sys.stderr)
    return 2
  missing = missing_modules(argv[1])
  if missing:
    print(f"the wheel lacks {missing}", file=sys.stderr)
    return 1
  print(f"wheel {os.path.basename(argv[1])}: every module of every subpackage is in it")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
