"""Every experiment config's small variant runs end to end through the library."""

import importlib.util
import json
import os
import sys

import jax
import pytest

from conftest import REPO
from sgdlab.memory import report
from sgdlab.sweep import runner
from sgdlab.train import step


def _module(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "experiments",
                                                                  f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name,points", [("classic_batch_size", 4), ("classic_grid", 4),
                                         ("population_lr_sweep", 6)])
def test_launch_configs_run_their_small_variant(tmp_path, name, points):
  config = _module(name).get_config("small")
  assert runner.run(config, runner.Options(str(tmp_path))) == 0
  done = [d for d in os.listdir(tmp_path) if os.path.isfile(tmp_path / d / "history.json")]
  assert len(done) == points
  assert (tmp_path / "summary.md").read_text().count("\n| ") >= 2


def test_the_classic_experiment_runs_three_seeds_by_default():
  config = _module("classic_batch_size").get_config()
  assert tuple(config.sweep.product.seed) == (0, 1, 2) and len(config.sweep.points) == 5


def test_fit_config_small_variant(tmp_path):
  config = _module("fit_batch_size").get_config("small")
  text = report.run(config, str(tmp_path), report.FitOptions(memory_budget="1GiB"))
  assert "largest power of two" in text
  assert json.loads((tmp_path / "fit.json").read_text())["reports"][0]["largest_k"] > 0


def test_steps_to_target_small_variant(tmp_path, monkeypatch):
  stt = _module("steps_to_target")
  monkeypatch.setattr(step, "make_mesh", lambda devices=None: jax.sharding.Mesh(
      (devices or jax.devices())[:1], (step.DATA,)))
  result = stt.experiment(stt.get_config("small"), str(tmp_path))
  assert result["best"], result["runs"]
  assert {"steps_to_target.png", "noise_scale.png", "table.md"} <= set(os.listdir(tmp_path))
