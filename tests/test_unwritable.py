"""Folders that cannot be made are refused before anything is written, in one line; and
loading a --config file writes nothing beside it."""

import os
import subprocess
import sys

import pytest

from conftest import subprocess_env
from sgdlab.errors import unwritable

TINY = """
from sgdlab.config import default_config

def get_config():
  c = default_config()
  c.data.name = "synthetic"
  c.data.synthetic_n_train, c.data.synthetic_n_test = 128, 64
  c.data.synthetic_input_shape = (6, 6, 1)
  c.model.hidden = (16,)
  c.num_epochs = 1
  return c
"""
# Passes a permission check as root, yet no folder can be made there.
UNDER_PROC = "/proc/sgdlab-no-such-folder/tb"


def _launch(tmp_path, *flags):
  env = subprocess_env(1)
  env.pop("PYTHONDONTWRITEBYTECODE", None)  # as on a fresh machine
  config = tmp_path / "configs" / "tiny.py"
  config.parent.mkdir(exist_ok=True)
  config.write_text(TINY)
  return subprocess.run([sys.executable, "-m", "sgdlab.launch", f"--config={config}",
                         f"--workdir={tmp_path / 'runs'}", *flags], capture_output=True,
                        text=True, env=env, timeout=300)


def test_a_check_that_passes_leaves_nothing_behind(tmp_path):
  assert unwritable(str(tmp_path / "a" / "b")) is None
  assert os.listdir(tmp_path) == []
  (tmp_path / "f").write_text("")
  assert unwritable(str(tmp_path / "f" / "x")) == f"{tmp_path / 'f'} is not a folder"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_a_tensorboard_dir_that_cannot_be_made_exits_2_and_writes_nothing(tmp_path):
  r = _launch(tmp_path, f"--tensorboard_dir={UNDER_PROC}")
  assert r.returncode == 2, r.stderr[-2000:]
  (line,) = r.stderr.strip().splitlines()
  assert line.startswith(f"error: --tensorboard_dir={UNDER_PROC} is invalid: not a writable "
                         "folder (/proc/sgdlab-no-such-folder")
  assert sorted(os.listdir(tmp_path)) == ["configs"]
  assert os.listdir(tmp_path / "configs") == ["tiny.py"]  # no __pycache__ beside it


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_a_cache_dir_that_cannot_be_made_exits_2_and_writes_nothing(tmp_path):
  pytest.importorskip("grain")
  r = _launch(tmp_path, "--config.data.pipeline=grain",
              f"--config.data.cache_dir={UNDER_PROC}")
  assert r.returncode == 2, r.stderr[-2000:]
  (line,) = r.stderr.strip().splitlines()
  assert line.startswith(f"error: config.data.cache_dir='{UNDER_PROC}' is invalid")
  assert sorted(os.listdir(tmp_path)) == ["configs"]


def test_loading_a_config_file_writes_no_bytecode_beside_it(tmp_path):
  r = _launch(tmp_path, "--config.num_epochs=0")  # refused after the file was loaded
  assert r.returncode == 2, r.stderr[-2000:]
  assert os.listdir(tmp_path / "configs") == ["tiny.py"]


def test_a_folder_another_process_makes_at_once_passes(tmp_path, monkeypatch):
  """Two hosts check one cache_dir together: the folder the other made counts as made."""
  real_mkdir = os.mkdir

  def beaten_to_it(folder, *args):
    real_mkdir(folder, *args)  # the other process got there first
    raise FileExistsError(17, "File exists", folder)

  monkeypatch.setattr(os, "mkdir", beaten_to_it)
  assert unwritable(str(tmp_path / "cache")) is None
  assert (tmp_path / "cache").is_dir()  # theirs, so it stays


def test_a_folder_another_process_writes_into_stays_and_passes(tmp_path, monkeypatch):
  real_mkdir = os.mkdir

  def then_filled(folder, *args):
    real_mkdir(folder, *args)
    if folder.endswith("b"):
      (tmp_path / "a" / "b" / "shard-0").write_text("")  # the other host's cache

  monkeypatch.setattr(os, "mkdir", then_filled)
  assert unwritable(str(tmp_path / "a" / "b")) is None
  assert os.listdir(tmp_path / "a" / "b") == ["shard-0"]


def test_a_folder_removed_under_the_check_is_looked_at_again(tmp_path, monkeypatch):
  """The other process removed the folder it made while this one wrote its probe."""
  real_open, removed = open, []

  def open_once_gone(file, *args, **kwargs):
    if ".write-test-" in str(file) and not removed:
      removed.append(os.path.dirname(file))
      raise FileNotFoundError(2, os.strerror(2), file)
    return real_open(file, *args, **kwargs)

  monkeypatch.setattr("builtins.open", open_once_gone)
  assert unwritable(str(tmp_path / "cache")) is None
  assert removed and os.listdir(tmp_path) == []
