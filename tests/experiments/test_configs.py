"""Every experiment config's small variant runs end to end through the library."""

import importlib.util
import json
import os
import sys

import jax
import pytest

from conftest import REPO
from sgdlab.studies import fit as fit_study_lib
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
  assert runner.run_sweep(config, runner.Options(str(tmp_path))) == 0
  done = [d for d in os.listdir(tmp_path) if os.path.isfile(tmp_path / d / "history.json")]
  assert len(done) == points
  assert (tmp_path / "summary.md").read_text().count("\n| ") >= 2


def test_the_classic_experiment_runs_three_seeds_by_default():
  config = _module("classic_batch_size").get_config()
  assert tuple(config.sweep.product.seed) == (0, 1, 2) and len(config.sweep.points) == 5


def test_fit_config_small_variant(tmp_path):
  config = _module("fit_batch_size").get_config("small")
  text = fit_study_lib.fit_study(config, str(tmp_path),
                                fit_study_lib.FitOptions(memory_budget="1GiB"))
  assert "largest power of two" in text
  assert json.loads((tmp_path / "fit.json").read_text())["reports"][0]["largest_k"] > 0


def test_steps_to_target_small_variant(tmp_path, monkeypatch):
  stt = _module("steps_to_target")
  monkeypatch.setattr(step, "make_mesh", lambda devices=None: jax.sharding.Mesh(
      (devices or jax.devices())[:1], (step.DATA,)))
  result = stt.experiment(stt.get_config("small"), str(tmp_path))
  assert result["best"], result["runs"]
  assert {"steps_to_target.png", "noise_scale.png", "table.md"} <= set(os.listdir(tmp_path))


@pytest.mark.slow  # about 70 s: ResNet compiles
def test_resnet_steps_to_target_small_variant_tunes_on_validation(tmp_path):
  stt = _module("steps_to_target")
  config = _module("resnet_cifar_steps_to_target").get_config("small")
  result = stt.experiment(config, str(tmp_path))
  assert result["best"], result["runs"]
  for b in result["best"].values():  # two seeds each, and the test figure at the target
    assert len(b["seed_steps"]) == 2 and 0 <= b["test_at_target"] <= 1
  assert result["noise"]["checkpoints"] == []  # batch norm: no exact per-example B_simple
  assert "test at target" in (tmp_path / "table.md").read_text()


@pytest.mark.slow  # about 50 s
def test_lm_steps_to_target_small_variant(tmp_path):
  stt = _module("steps_to_target")
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("the quick brown fox jumps over the lazy dog. " * 60, encoding="utf-8")
  config = _module("lm_steps_to_target").get_config("small")
  config.data.path = str(corpus)
  result = stt.experiment(config, str(tmp_path / "out"))
  assert result["best"], result["runs"]
  assert all(b["test_at_target"] > 0 for b in result["best"].values())  # bits per byte
  assert result["metric"] == "validation_bits_per_byte"


def test_the_lm_experiment_writes_python_docs_once_when_no_path_is_given(tmp_path):
  lm = _module("lm_steps_to_target")
  path = lm.corpus(str(tmp_path))
  text = open(path, encoding="utf-8").read()
  assert len(text) > 100_000 and lm.corpus(str(tmp_path)) == path
