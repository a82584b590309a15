"""Checkpoints: a resumed run ends bitwise equal to an uninterrupted one, even after kill -9."""

import csv
import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import conftest
from conftest import subprocess_env
from sgdlab import config as config_lib, data
from sgdlab.results import summary
from sgdlab.results import files
from sgdlab import trainer
from sgdlab.train import loop, run as run_lib

TIMING_KEYS = ("wall_time", "examples_per_sec")


def tiny_config(**overrides):
  """conftest's tiny run, 4 epochs, checkpointing after each."""
  return conftest.tiny_config(**{"num_epochs": 4, "checkpoint_every_epochs": 1, **overrides})


def assert_same_run(a, b):
  """Bitwise: parameters, optimizer state, step, per-step curves, per-epoch figures."""
  for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert a.steps.keys() == b.steps.keys()
  for key in a.steps:
    np.testing.assert_array_equal(a.steps[key], b.steps[key], err_msg=key)
  keys = [k for k in a.epochs if k not in TIMING_KEYS]
  assert keys == [k for k in b.epochs if k not in TIMING_KEYS]
  for key in keys:
    np.testing.assert_array_equal(a.epochs[key], b.epochs[key], err_msg=key)
  assert a.diverged == b.diverged and a.diagnostics == b.diagnostics


@pytest.fixture(scope="module")
def plain(mesh1):
  """4 epochs, never interrupted, no checkpoints."""
  return trainer.train(tiny_config(checkpoint_every_epochs=0), mesh=mesh1)


def test_resume_from_a_checkpoint_is_bitwise_equal(mesh1, tmp_path, plain):
  ckpt = str(tmp_path / "ckpt")
  full = trainer.train(tiny_config(), mesh=mesh1, checkpoint_dir=ckpt)
  assert_same_run(plain, full)  # checkpointing itself changes nothing
  assert sorted(os.listdir(ckpt)) == ["3", "4"]
  shutil.rmtree(os.path.join(ckpt, "4"))  # as if killed during epoch 4
  resumed = trainer.train(tiny_config(), mesh=mesh1, checkpoint_dir=ckpt)
  assert_same_run(plain, resumed)
  assert resumed.epochs["wall_time"][:3] == full.epochs["wall_time"][:3]  # restored, not rerun


def test_live_rows_after_a_resume_are_the_checkpoints_then_grow_again(mesh1, tmp_path):
  ckpt, seen = str(tmp_path / "ckpt"), []
  config = tiny_config()
  run = run_lib.create_run(config_lib.resolve(config, n_devices=1), data.load(config.data),
                           mesh1)
  record = lambda member, history: seen.append(history.num_epochs)
  loop.run_loop(run, checkpoint_dir=ckpt, on_epoch=record)
  assert seen == [1, 2, 3, 4]
  shutil.rmtree(os.path.join(ckpt, "4"))  # killed after epoch 4's row, before its save
  seen.clear()
  loop.run_loop(run, checkpoint_dir=ckpt, on_epoch=record)
  assert seen == [3, 4]  # epoch 4's row is dropped at the resume, then written again


def test_resume_keeps_optimizer_state_types_and_the_noise_ema(mesh1, tmp_path):
  """Momentum's optax state, the noise-scale EMA (replayed from the history) and the
  noise probe (drawn from the seed and the epoch)."""
  overrides = {"noise_scale": True, "optimizer.name": "momentum", "num_epochs": 3,
               "noise_probe_batches": 2}
  reference = trainer.train(tiny_config(checkpoint_every_epochs=0, **overrides), mesh=mesh1)
  ckpt = str(tmp_path / "ckpt")
  trainer.train(tiny_config(checkpoint_every_epochs=2, **overrides), mesh=mesh1,
                checkpoint_dir=ckpt)
  shutil.rmtree(os.path.join(ckpt, "3"))
  resumed = trainer.train(tiny_config(checkpoint_every_epochs=2, **overrides), mesh=mesh1,
                          checkpoint_dir=ckpt)
  assert type(resumed.state.opt_state) is type(reference.state.opt_state)
  assert np.isfinite(resumed.epochs["noise_scale"][-1])
  assert np.isfinite(resumed.epochs["probe_noise_scale"][-1])
  assert_same_run(reference, resumed)


def _corrupt(step_dir):
  for path in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True):
    with open(path, "wb") as f:
      f.write(b"not a checkpoint")


def test_corrupt_checkpoint_falls_back_to_the_previous_one(mesh1, tmp_path, caplog, plain):
  ckpt = str(tmp_path / "ckpt")
  first = trainer.train(tiny_config(), mesh=mesh1, checkpoint_dir=ckpt)
  _corrupt(os.path.join(ckpt, "4"))
  with caplog.at_level(logging.WARNING):
    resumed = trainer.train(tiny_config(), mesh=mesh1, checkpoint_dir=ckpt)
  assert "checkpoint at epoch 4" in caplog.text and "unreadable" in caplog.text
  assert resumed.epochs["wall_time"][:3] == first.epochs["wall_time"][:3]  # from epoch 3
  assert resumed.epochs["wall_time"][3] != first.epochs["wall_time"][3]  # epoch 4 rerun
  assert_same_run(plain, resumed)


def test_no_readable_checkpoint_starts_over_with_a_message(mesh1, tmp_path, caplog, plain):
  ckpt = str(tmp_path / "ckpt")
  trainer.train(tiny_config(), mesh=mesh1, checkpoint_dir=ckpt)
  _corrupt(os.path.join(ckpt, "4"))
  with open(os.path.join(ckpt, "3", "host", "metadata"), "w") as f:
    f.write("{torn")
  with caplog.at_level(logging.WARNING):
    resumed = trainer.train(tiny_config(), mesh=mesh1, checkpoint_dir=ckpt)
  assert "starting the run over from epoch 0" in caplog.text
  assert_same_run(plain, resumed)


# ---------------------------------------------------------------- kill -9 in a subprocess

KILLABLE = textwrap.dedent('''
    from sgdlab.config import default_config

    def get_config():
      c = default_config()
      c.data.name = "synthetic"
      c.data.synthetic_n_train = 3000
      c.data.synthetic_n_test = 200
      c.data.synthetic_input_shape = (8, 8, 1)
      c.model.hidden = (64, 64)
      c.batch_size = 8
      c.num_epochs = 8
      c.learning_rate = 0.1
      c.checkpoint_every_epochs = 1
      return c
''')


def _launch_cmd(tmp_path, workdir, text=KILLABLE):
  config = tmp_path / "killable.py"
  config.write_text(text)
  return [sys.executable, "-m", "sgdlab.launch", f"--config={config}", f"--workdir={workdir}"]


def _reference(tmp_path, mesh1, text=KILLABLE):
  """The uninterrupted run, trained in this process on one device."""
  namespace = {}
  exec(text, namespace)  # noqa: S102 - the test's own config text
  return trainer.train(namespace["get_config"](), mesh=mesh1)


def _finished_checkpoints(workdir):
  return [d for d in glob.glob(os.path.join(workdir, "*", "checkpoints", "*"))
          if os.path.basename(d).isdigit()]


def _run_killed(tmp_path, workdir, kill_when, after_kill=lambda: None, text=KILLABLE):
  """Start the launcher, kill -9 it once kill_when() holds, call after_kill(), then run
  it again to the end."""
  cmd = _launch_cmd(tmp_path, workdir, text)
  proc = subprocess.Popen(cmd, env=subprocess_env(1), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 240
  while not kill_when() and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.01)
  assert proc.poll() is None, "the run ended before it could be killed: make it longer"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  for point in files.point_dirs(str(workdir)):  # none if killed before training
    assert files.status(point)["status"] == "running"
  after_kill()
  again = subprocess.run(cmd, env=subprocess_env(1), capture_output=True, text=True,
                         timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  (point,) = glob.glob(os.path.join(workdir, "*", "config.json"))
  return os.path.dirname(point), again.stderr


def _assert_point_equals(point, reference):
  params = files.load_params(point)
  flat = {"/".join(str(k.key) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(reference.state.params)[0]}
  assert params.keys() == flat.keys()
  for key in flat:
    np.testing.assert_array_equal(params[key], flat[key], err_msg=key)
  history = files.load_history(point)
  assert history.steps == reference.steps
  for key in reference.epochs:
    if key not in TIMING_KEYS:
      assert history.epochs[key] == reference.epochs[key], key
  assert files.status(point)["status"] == "done"


def _rows(workdir):
  """The epoch rows on disk now: epochs.csv of the (one) point, without its header."""
  files = glob.glob(os.path.join(workdir, "*", "epochs.csv"))
  if not files:
    return []
  with open(files[0]) as f:
    return list(csv.DictReader(f))


def test_kill_9_after_two_epochs_leaves_their_rows_then_rerun_is_bitwise_equal(tmp_path,
                                                                               mesh1):
  workdir = tmp_path / "killed"
  seen, listed = [], []

  def after_kill():
    seen.extend(_rows(workdir))
    listed.extend(summary.read_results(str(workdir)).unfinished)  # what sgdlab.report shows

  point, log = _run_killed(tmp_path, workdir, lambda: len(_rows(workdir)) >= 2, after_kill)
  assert "resumed from the checkpoint at epoch" in log
  reference = _reference(tmp_path, mesh1)
  # Every epoch's row reached the point's folder as soon as it existed, with the values
  # of the uninterrupted run, and the killed run's status said how far it got.
  assert len(seen) >= 2
  # The status follows the rows within one write: a kill may fall between the two.
  assert [state for _, state in listed] in ([f"running, epoch {n} written"]
                                            for n in (len(seen), len(seen) - 1))
  for i, row in enumerate(seen):
    assert int(row["epoch"]) == i + 1
    assert float(row["test_loss"]) == pytest.approx(reference.epochs["test_loss"][i], rel=1e-6)
  _assert_point_equals(point, reference)


@pytest.mark.slow  # grain after kill -9 in the default suite: tests/data/test_imagenet.py
def test_kill_9_mid_run_with_the_grain_pipeline_then_rerun_is_bitwise_equal(tmp_path, mesh1):
  """The resumed stream starts where the checkpoint's iterator state says: the batches,
  and so every bit, of the uninterrupted grain run (itself bitwise the device run)."""
  text = KILLABLE.replace("return c", f"c.data.pipeline = 'grain'\n"
                          f"  c.data.cache_dir = {str(tmp_path / 'cache')!r}\n  return c")
  workdir = tmp_path / "killed"
  point, log = _run_killed(tmp_path, workdir, lambda: len(_finished_checkpoints(workdir)) >= 2,
                           text=text)
  assert "resumed from the checkpoint at epoch" in log
  assert glob.glob(str(workdir / "*" / "checkpoints")) == []  # removed once done
  _assert_point_equals(point, _reference(tmp_path, mesh1, text))


@pytest.mark.slow
@pytest.mark.parametrize("checkpoints,delay", [(0, 0.5), (2, 0.0), (3, 0.04), (5, 0.08)])
def test_kill_9_at_other_moments_then_rerun_is_bitwise_equal(tmp_path, mesh1, checkpoints,
                                                               delay):
  """Kills while compiling, mid-save or mid-epoch: `delay` s after the n-th checkpoint
  (n = 0: after the point's status appears)."""
  workdir = tmp_path / "killed"
  since = []

  def when():
    done = [int(os.path.basename(d)) for d in _finished_checkpoints(workdir)]
    ready = (max(done, default=0) >= checkpoints if checkpoints
             else glob.glob(os.path.join(workdir, "*", "status.json")))
    if ready and not since:
      since.append(time.monotonic())
    return bool(since) and time.monotonic() - since[0] >= delay

  point, _ = _run_killed(tmp_path, workdir, when)
  _assert_point_equals(point, _reference(tmp_path, mesh1))
