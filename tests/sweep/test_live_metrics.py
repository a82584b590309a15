"""Live metrics: TensorBoard events equal to the run's own files, each step once after a
resume, an unwritable folder as one line, and sweep progress through tqdm."""

import csv
import glob
import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from absl import logging
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from conftest import subprocess_env, tiny_config
from sgdlab import config as config_lib, data
from sgdlab.results import tensorboard
from sgdlab.results import files
from sgdlab.sweep import progress, runner, workers
from sgdlab import trainer
from sgdlab.train import loop, run as run_lib


def read_events(path):
  acc = event_accumulator.EventAccumulator(str(path), size_guidance={
      event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
  acc.Reload()
  return acc


def hparams_data(acc):
  return {tag: plugin_data_pb2.HParamsPluginData.FromString(content)
          for tag, content in acc.PluginTagToContent("hparams").items()}


def f32(values):
  return np.asarray(values, np.float32).tolist()


def _rows(point_dir):
  with open(os.path.join(point_dir, "epochs.csv")) as f:
    return list(csv.DictReader(f))


# ------------------------------------------------------------------ a sweep's events


def test_a_sweeps_events_equal_its_files_and_list_its_hparams(tmp_path):
  config = tiny_config(num_epochs=2, **{"data.synthetic_n_train": 96})
  config.sweep.points = ({"batch_size": 32}, {"batch_size": 16, "noise_scale": True})
  workdir = tmp_path / "runs"
  assert runner.run_sweep(config, runner.Options(str(workdir))) == 0
  ids = sorted(p.name for p in workdir.iterdir() if (p / "history.json").exists())
  assert sorted(os.listdir(workdir / "tensorboard")) == ids and len(ids) == 2
  for point in ids:
    history = files.load_history(str(workdir / point))
    acc = read_events(workdir / "tensorboard" / point)
    k = history.config["batch_size"]
    steps_per_epoch = -(-96 // k)
    loss = acc.Scalars("step/loss")
    assert [e.step for e in loss] == list(range(1, len(history.steps["loss"]) + 1))
    assert [e.value for e in loss] == f32(history.steps["loss"])
    assert [e.value for e in acc.Scalars("step/lr")] == f32(history.steps["lr"])
    rows = _rows(workdir / point)
    test_accuracy = acc.Scalars("test/accuracy")
    assert [e.step for e in test_accuracy] == [steps_per_epoch * (i + 1) for i in range(2)]
    assert [e.value for e in test_accuracy] == f32([float(r["test_accuracy"]) for r in rows])
    assert [e.value for e in acc.Scalars("train/loss")] == f32(history.epochs["train_loss"])
    noisy = history.config["noise_scale"]
    assert ("noise/B_simple" in acc.Tags()["scalars"]) == noisy
    if noisy:
      assert [e.value for e in acc.Scalars("noise/B_simple")] == f32(history.epochs["noise_scale"])
      finite = [i + 1 for i, g in enumerate(history.steps["grad_sq"]) if np.isfinite(g)]
      assert [e.step for e in acc.Scalars("step/grad_sq")] == finite and finite
    plugin = hparams_data(acc)
    hp = plugin["_hparams_/session_start_info"].session_start_info.hparams
    assert hp["batch_size"].number_value == k and hp["learning_rate"].number_value == 0.5
    assert hp["lr_decay"].number_value == history.config["lr_decay"]
    assert hp["seed"].number_value == 0 and hp["model.name"].string_value == "mlp"
    assert hp["model.hidden"].string_value == "[32]" and "sweep.points" not in hp
    metrics = plugin["_hparams_/experiment"].experiment.metric_infos
    assert [m.name.tag for m in metrics] == list(tensorboard.METRICS)
    status = plugin["_hparams_/session_end_info"].session_end_info.status
    assert status == api_pb2.STATUS_SUCCESS


def test_a_population_writes_one_run_per_member_with_its_own_values(tmp_path, mesh1):
  configs = [tiny_config(num_epochs=2, learning_rate=lr) for lr in (0.5, 0.05)]
  histories = trainer.train_population(configs, mesh=mesh1, log_dir=str(tmp_path))
  names = sorted(os.listdir(tmp_path))
  assert len(names) == 2 and names[0].startswith("0_k=32_lr=0.5")
  for name, history in zip(names, histories):
    acc = read_events(tmp_path / name)
    assert [e.value for e in acc.Scalars("step/loss")] == f32(history.steps["loss"])
    hp = hparams_data(acc)["_hparams_/session_start_info"].session_start_info.hparams
    assert hp["learning_rate"].number_value == history.config["learning_rate"]
  assert histories[0].steps["loss"] != histories[1].steps["loss"]


def test_the_tensorboard_folder_defaults_to_the_workdirs_and_an_empty_one_is_none():
  assert runner.Options("runs/x").log_root == os.path.join("runs/x", "tensorboard")
  assert runner.Options("runs/x", tensorboard_dir="tb").log_root == "tb"
  assert runner.Options("runs/x", tensorboard_dir="").log_root == ""
  events = tensorboard.Events(None, epoch_end_steps=(4, 8))
  events(0, None)  # nothing to write to, nothing read
  events.finish([None])


# ------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def four_epochs(mesh1):
  config = tiny_config(num_epochs=4, checkpoint_every_epochs=1)
  return run_lib.create_run(config_lib.resolve(config, n_devices=1), data.load(config.data),
                            mesh1)


@pytest.mark.parametrize("removed,resumes_at", [(("4",), 3), (("3", "4"), 0)])
def test_after_a_resume_each_step_is_there_once_and_restored_rows_are_not_rewritten(
    tmp_path, four_epochs, removed, resumes_at):
  """The first process writes 4 epochs and 'dies' (no finish) after the checkpoints listed
  in `removed`; the second resumes from the newest one left (or starts over)."""
  run, logs, ckpt = four_epochs, str(tmp_path / "tb"), str(tmp_path / "ckpt")
  spe = run.program.steps_per_epoch
  with tensorboard.Events([logs], epoch_end_steps=run.program.first.epoch_end_steps) as events:
    loop.run_loop(run, checkpoint_dir=ckpt, on_epoch=events)
  for name in removed:
    shutil.rmtree(os.path.join(ckpt, name))
  resumed_at = time.time()
  with tensorboard.Events([logs], epoch_end_steps=run.program.first.epoch_end_steps) as events:
    (history,) = loop.run_loop(run, checkpoint_dir=ckpt, on_epoch=events)
    events.finish([history])
  assert len(glob.glob(os.path.join(logs, "*tfevents*"))) == 2
  acc = read_events(logs)
  loss = acc.Scalars("step/loss")
  assert [e.step for e in loss] == list(range(1, 4 * spe + 1))  # once each: purged
  assert [e.value for e in loss] == f32(history.steps["loss"])
  test_accuracy = acc.Scalars("test/accuracy")
  assert [e.step for e in test_accuracy] == [spe, 2 * spe, 3 * spe, 4 * spe]
  assert [e.value for e in test_accuracy] == f32(history.epochs["test_accuracy"])
  # What the first process wrote up to the resume stays; the second wrote only the rest.
  kept = max(resumes_at, 1) * spe  # starting over, epoch 1 is known to be there already
  assert all(e.wall_time < resumed_at for e in loss[:kept])
  assert all(e.wall_time >= resumed_at for e in loss[kept:])
  assert [e.wall_time < resumed_at for e in test_accuracy] == [i < kept // spe
                                                               for i in range(4)]


# ---------------------------------------------------------------------- bad input

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


def test_an_unwritable_tensorboard_dir_exits_2_with_one_line_and_writes_nothing(tmp_path):
  config, a_file, workdir = tmp_path / "tiny.py", tmp_path / "a_file", tmp_path / "runs"
  config.write_text(TINY)
  a_file.write_text("")
  r = subprocess.run([sys.executable, "-m", "sgdlab.launch", f"--config={config}",
                      f"--workdir={workdir}", f"--tensorboard_dir={a_file / 'tb'}"],
                     capture_output=True, text=True, env=subprocess_env(1), timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  (line,) = r.stderr.strip().splitlines()
  assert line == (f"error: --tensorboard_dir={a_file / 'tb'} is invalid: not a writable "
                  f"folder ({a_file} is not a folder)")
  assert not workdir.exists() and a_file.read_text() == ""
  assert sorted(os.listdir(tmp_path)) == ["a_file", "tiny.py"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_folder_under_a_read_only_one_is_refused_without_making_anything(tmp_path):
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o555)
  try:
    with pytest.raises(runner.UsageError, match="Permission denied"):
      runner.check_log_dir(str(locked / "a" / "b"))
  finally:
    locked.chmod(0o755)
  assert os.listdir(locked) == []


def test_the_checked_folder_may_exist_or_be_made_and_nothing_is_made_by_the_check(tmp_path):
  runner.check_log_dir(str(tmp_path))
  runner.check_log_dir(str(tmp_path / "new" / "deeper"))
  assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------- progress


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_log_lines_count_only_trained_points_for_the_eta_and_write_no_bar():
  stream = io.StringIO()
  with progress.Progress(5, 3, workers.Worker(), stream=stream) as p:
    assert p.settled() == "2 left"  # skipped: nothing to time yet
    assert p.settled(10.0) == "1 left, ETA 00:10 at 10.00s/point"
    assert p.settled(20.0) == "0 left, ETA 00:00 at 15.00s/point"
  assert stream.getvalue() == ""


def test_on_a_terminal_a_bar_counts_trained_points_and_logs_go_above_it():
  stream, handler = _Terminal(), logging.get_absl_handler()
  with progress.Progress(5, 3, workers.Worker(1, 2), stream=stream) as p:
    assert "handle" in vars(handler)  # log lines clear the bar, print, redraw it
    p.settled()  # skipped: the bar's total drops to 2
    p.settled(3.0)
    logging.info("a line above the bar")
  assert "handle" not in vars(handler)
  text = stream.getvalue()
  assert "worker 1/2" in text and "0/3" in text and "1/2" in text
  assert text.endswith("\n")  # closed


# ------------------------------------------------------------------ kill -9 (slow)

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
      c.num_epochs = 6
      c.learning_rate = 0.1
      c.checkpoint_every_epochs = 1
      return c
''')


@pytest.mark.slow
def test_kill_9_then_rerun_leaves_each_step_once_with_the_final_values(tmp_path):
  config, workdir = tmp_path / "killable.py", tmp_path / "runs"
  config.write_text(KILLABLE)
  cmd = [sys.executable, "-m", "sgdlab.launch", f"--config={config}", f"--workdir={workdir}"]
  proc = subprocess.Popen(cmd, env=subprocess_env(1), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 240
  while proc.poll() is None and time.monotonic() < deadline:
    points = glob.glob(os.path.join(workdir, "*", "epochs.csv"))
    if points and len(_rows(os.path.dirname(points[0]))) >= 2:
      break
    time.sleep(0.01)
  assert proc.poll() is None, "the run ended before it could be killed: make it longer"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  again = subprocess.run(cmd, env=subprocess_env(1), capture_output=True, text=True,
                         timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resumed from the checkpoint at epoch" in again.stderr
  (point,) = [p for p in os.listdir(workdir) if (workdir / p / "history.json").exists()]
  history = files.load_history(str(workdir / point))
  acc = read_events(workdir / "tensorboard" / point)
  loss = acc.Scalars("step/loss")
  assert [e.step for e in loss] == list(range(1, len(history.steps["loss"]) + 1))
  assert [e.value for e in loss] == f32(history.steps["loss"])
  assert [e.value for e in acc.Scalars("test/accuracy")] == f32(
      [float(r["test_accuracy"]) for r in _rows(workdir / point)])
