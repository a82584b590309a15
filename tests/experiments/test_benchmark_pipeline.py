"""The pipeline benchmark on a small slice: every setting runs and trains the same bits."""

import os
import subprocess
import sys

import pytest

import conftest


@pytest.mark.slow
def test_the_pipeline_benchmark_reports_every_setting_with_equal_parameters():
  script = os.path.join(conftest.REPO, "experiments", "benchmark_pipeline.py")
  proc = subprocess.run([sys.executable, script, f"--config={script}:small"],
                        env=conftest.subprocess_env(1),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (row,) = [line for line in proc.stdout.splitlines() if line.startswith("| mlp |")]
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert len(cells) == 5 and cells[-1] == "yes", row
  for cell in cells[1:4]:
    assert float(cell.split()[0].replace(",", "")) > 0, row
