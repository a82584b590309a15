"""The launcher end to end in a subprocess: files written, and exit code 2 on bad input."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import subprocess_env

TINY = textwrap.dedent('''
    from sgdlab.config import default_config

    def get_config():
      c = default_config()
      c.data.name = "synthetic"
      c.data.synthetic_n_train = 128
      c.data.synthetic_n_test = 64
      c.data.synthetic_input_shape = (6, 6, 1)
      c.model.hidden = (16,)
      c.num_epochs = 2
      c.sweep.points = ({"batch_size": 64}, {"batch_size": 16, "seed": 1})
      return c
''')


def launch(tmp_path, *args, n_devices=1):
  config = tmp_path / "tiny.py"
  config.write_text(TINY)
  return subprocess.run([sys.executable, "-m", "sgdlab.launch", f"--config={config}", *args],
                        capture_output=True, text=True, env=subprocess_env(n_devices),
                        timeout=300)


def test_launcher_writes_runs_summary_and_figures(tmp_path):
  workdir = tmp_path / "runs"
  r = launch(tmp_path, f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr[-3000:]
  points = sorted(p for p in os.listdir(workdir) if (workdir / p / "config.json").exists())
  assert len(points) == 2
  for p in points:
    files = set(os.listdir(workdir / p))
    assert {"config.json", "history.json", "epochs.csv", "curves.png", "status.json"} <= files
    assert json.loads((workdir / p / "status.json").read_text())["status"] == "done"
    history = json.loads((workdir / p / "history.json").read_text())
    assert len(history["epochs"]["epoch"]) == 2
  summary = (workdir / "summary.md").read_text()
  assert "| k=64 lr=1 decay=0.001 | 64 |" in summary and "| k=16 lr=1 decay=0.001 | 16 |" in summary
  assert (workdir / "overlay.png").stat().st_size > 10_000
  assert "epoch 2/2" in r.stderr  # absl logs one line per epoch
  # Running again skips the finished points.
  again = launch(tmp_path, f"--workdir={workdir}")
  assert again.returncode == 0 and again.stderr.count("already done") == 2


@pytest.mark.parametrize("override,expected", [
    ("--config.learning_rate=-1", "config.learning_rate=-1.0 is invalid"),
    ("--config.lr_decay=-0.5", "config.lr_decay=-0.5 is invalid"),
    ("--config.num_epochs=0", "config.num_epochs=0 is invalid"),
    ("--config.model.name=vgg", "config.model.name='vgg' is invalid"),
    # The sweep sets batch_size: an override of it would be dropped without a word.
    ("--config.batch_size=8", "--config.batch_size=8 is invalid: the sweep sets batch_size"),
    ("--config.seed=3", "sweep.points[1]"),
    ("--config.sweep.points=({'batch_size': 4096},)", "at most the training set size 128"),
    ("--config.sweep.points=({'batch_sise': 8},)", "batch_sise"),
    ("--config.no_such_field=3", "no_such_field"),
])
def test_bad_values_exit_2_with_one_line_and_write_nothing(tmp_path, override, expected):
  workdir = tmp_path / "runs"
  r = launch(tmp_path, f"--workdir={workdir}", override)
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  lines = [l for l in r.stderr.strip().splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and expected in lines[0], r.stderr[-2000:]
  assert not workdir.exists()


def test_k_not_a_multiple_of_the_devices_exits_2(tmp_path):
  r = launch(tmp_path, f"--workdir={tmp_path / 'runs'}",
             "--config.sweep.points=({'batch_size': 6},)", n_devices=4)
  assert r.returncode == 2 and "multiple of the device count 4" in r.stderr


@pytest.mark.parametrize("text,expected", [
    (None, "--config={path} is invalid: no such file"),
    ("def get_config(:\n", "--config={path} is invalid: syntax error at line 1"),
])
def test_a_missing_or_broken_config_file_is_one_line(tmp_path, text, expected):
  path = tmp_path / "experiment.py"
  if text is not None:
    path.write_text(text)
  r = subprocess.run([sys.executable, "-m", "sgdlab.launch", f"--config={path}",
                      f"--workdir={tmp_path / 'runs'}"], capture_output=True, text=True,
                     env=subprocess_env(1), timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {expected.format(path=path)}")
  assert "Traceback" not in r.stderr and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("budget,expected", [
    ("lots", "config.memory_budget='lots' is invalid"),
    ("1MiB", "Nothing fits"),
])
def test_auto_batch_size_with_a_bad_budget_fails_before_anything_is_written(tmp_path, budget,
                                                                          expected):
  workdir = tmp_path / "runs"
  r = launch(tmp_path, f"--workdir={workdir}", "--config.sweep.points=({'batch_size': 'auto'},)",
             f"--config.memory_budget={budget}")
  assert r.returncode == 2, r.stderr[-2000:]
  lines = [l for l in r.stderr.strip().splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and expected in lines[0] and "Traceback" not in r.stderr
  assert not workdir.exists()
