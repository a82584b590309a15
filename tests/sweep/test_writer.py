"""The one writer of results: a run's folder from sgdlab.train(workdir=...) and from a sweep,
and a population resumed after one of its points was written and the other was not."""

import json
import logging
import os

import numpy as np

import conftest
from sgdlab import trainer
from sgdlab.results import files
from sgdlab.sweep import runner

RESULT_FILES = ["config.json", "curves.png", "epochs.csv", "history.json", "params.npz",
                "status.json"]


def _population(**overrides):
  config = conftest.tiny_config(num_epochs=3, checkpoint_every_epochs=1, population=True,
                                **overrides)
  config.sweep.product.learning_rate = (0.5, 0.05)
  return config


def test_train_with_a_workdir_writes_the_run_folder_once(tmp_path, mesh1):
  workdir = tmp_path / "run"
  h = trainer.train(conftest.tiny_config(num_epochs=2), workdir=str(workdir), mesh=mesh1)
  assert sorted(os.listdir(workdir)) == RESULT_FILES
  assert files.status(str(workdir))["status"] == "done"
  assert files.read_json(workdir / "config.json") == json.loads(json.dumps(h.config,
                                                                           default=str))
  assert files.load_history(str(workdir)).epochs["test_accuracy"] == h.epochs["test_accuracy"]


def test_a_population_with_a_workdir_writes_one_folder_per_member(tmp_path, mesh1):
  configs = [conftest.tiny_config(num_epochs=1, learning_rate=lr) for lr in (0.5, 0.1)]
  histories = trainer.train_population(configs, workdir=str(tmp_path), mesh=mesh1)
  folders = sorted(d for d in os.listdir(tmp_path) if d != "checkpoints")
  assert [f.split("_")[0] for f in folders] == ["0", "1"]
  for folder, h in zip(folders, histories):
    assert files.load_history(str(tmp_path / folder)).steps["loss"] == h.steps["loss"]


def test_config_json_is_the_resolved_config_and_a_rerun_accepts_it(tmp_path):
  config = _population()
  config.batch_size = 32
  assert runner.run_sweep(config, runner.Options(str(tmp_path))) == 0
  (point,) = [p for p in files.point_dirs(str(tmp_path)) if "0.05" in p]
  stored = files.read_json(os.path.join(point, "config.json"))
  assert stored == files.load_history(point).config  # one config.json, written once
  assert runner.run_sweep(config, runner.Options(str(tmp_path))) == 0  # all skipped


def test_a_population_killed_between_its_points_files_resumes_bitwise(tmp_path, caplog):
  """A kill after one member's status was written and before the other's: the rerun
  trains the whole population again from its checkpoint and writes only the other."""
  reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
  assert runner.run_sweep(_population(), runner.Options(reference)) == 0
  assert runner.run_sweep(_population(), runner.Options(killed, keep_checkpoints=True)) == 0
  first, second = files.point_dirs(killed)
  files.set_status(second, "running", epoch=3)
  os.unlink(os.path.join(second, "history.json"))
  before = open(os.path.join(first, "history.json")).read()
  with caplog.at_level(logging.INFO):
    assert runner.run_sweep(_population(), runner.Options(killed)) == 0
  assert "resumed from the checkpoint at epoch 3" in caplog.text
  assert open(os.path.join(first, "history.json")).read() == before  # left as it was
  for mine, theirs in zip(files.point_dirs(killed), files.point_dirs(reference)):
    a, b = files.load_history(mine), files.load_history(theirs)
    np.testing.assert_array_equal(a.steps["loss"], b.steps["loss"])
    np.testing.assert_array_equal(a.epochs["train_loss"], b.epochs["train_loss"])
    np.testing.assert_array_equal(files.load_params(mine)["dense0/kernel"],
                                  files.load_params(theirs)["dense0/kernel"])
