"""The accelerator check's --smoke mode: every code path it takes on a GPU, on CPU."""

import os
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO, experiment, subprocess_env

SCRIPT = os.path.join(REPO, "experiments", "device_check.py")


@pytest.mark.slow  # about 70 s on 2 cores; tests/studies runs each of its engines
def test_smoke_prints_every_table():
  r = subprocess.run([sys.executable, SCRIPT, "--smoke"], capture_output=True, text=True,
                     env=subprocess_env(1), cwd=REPO, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  out = r.stdout
  rows = [l for l in out.splitlines() if l.startswith(("| mlp |", "| cnn |"))]
  speed, precision = rows[:2], rows[2:]  # sgdlab / best; then fp32, bf16, accumulation
  assert len(speed) == 2 and all(l.rstrip().endswith("x |") for l in speed), out
  assert "| bf16 / fp32 |" in out and len(precision) == 2, out
  assert all(l.count("|") == 7 and "x |" in l for l in precision), out
  assert "population P=2, k=8" in out and "sequential runs" in out
  assert "compile mode: budget" in out and "real trial at k=" in out
  assert "real boundary k=" in out and "device check done" in out


def test_wheels_are_imported_from_the_wheel_folder(tmp_path):
  module = experiment("device_check")
  with zipfile.ZipFile(tmp_path / "probe_pkg-1.0-py3-none-any.whl", "w") as z:
    z.writestr("probe_pkg/__init__.py", "VALUE = 42\n")
  before = list(sys.path)
  try:
    assert module.add_wheels(str(tmp_path)) == ["probe_pkg-1.0-py3-none-any.whl"]
    import probe_pkg  # pylint: disable=g-import-not-at-top
    assert probe_pkg.VALUE == 42
  finally:
    sys.path[:] = before
    sys.modules.pop("probe_pkg", None)
