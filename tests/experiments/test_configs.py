"""Every experiment config's small variant runs end to end through the library."""

import json
import os

import ml_collections
import pytest

from conftest import REPO, experiment
from sgdlab.studies import corpus, fit as fit_study_lib, steps_to_target
from sgdlab.results import summary as summary_lib
from sgdlab.sweep import runner

EXPERIMENTS = os.path.join(REPO, "experiments")

NAMES = sorted(f[:-3] for f in os.listdir(EXPERIMENTS) if f.endswith(".py"))


@pytest.mark.parametrize("name", NAMES)
def test_every_experiment_is_a_config_with_its_command_and_a_small_variant(name):
  module = experiment(name)
  doc = module.__doc__
  assert f"experiments/{name}.py" in doc, "the docstring gives the command"
  assert "2 CPU cores" in doc or "CPU" in doc, "and its cost"
  variant = "smoke" if name == "device_check" else "small"
  assert f":{variant}" in doc or f"--{variant}" in doc, "and the small variant the tests run"
  for v in ("", variant):
    assert isinstance(module.get_config(v), ml_collections.ConfigDict), v
  assert module.get_config() != module.get_config(variant)
  assert len(open(module.__file__).readlines()) <= 100


def test_loading_an_experiment_writes_no_bytecode():
  experiment("classic_grid")
  assert not os.path.exists(os.path.join(EXPERIMENTS, "__pycache__")) or not any(
      f.startswith("classic_grid.") for f in os.listdir(os.path.join(EXPERIMENTS, "__pycache__")))


@pytest.mark.parametrize("name,points", [("classic_batch_size", 4),
                                         pytest.param("classic_grid", 4, marks=pytest.mark.slow),
                                         ("population_lr_sweep", 6), ("edge_of_stability", 3)])
def test_launch_configs_run_their_small_variant(tmp_path, name, points):
  config = experiment(name).get_config("small")
  assert runner.run_sweep(config, runner.Options(str(tmp_path))) == 0
  done = [d for d in os.listdir(tmp_path) if os.path.isfile(tmp_path / d / "history.json")]
  assert len(done) == points
  assert (tmp_path / "summary.md").read_text().count("\n| ") >= 2


def test_the_classic_experiment_runs_ten_seeds_as_populations_by_default():
  config = experiment("classic_batch_size").get_config()
  assert tuple(config.sweep.product.seed) == tuple(range(10)) and len(config.sweep.points) == 5
  assert config.population


def test_fit_config_small_variant(tmp_path):
  config = experiment("fit_batch_size").get_config("small")
  text = fit_study_lib.fit_study(config, str(tmp_path),
                                fit_study_lib.FitOptions(memory_budget="1GiB"))
  assert "largest power of two" in text
  assert json.loads((tmp_path / "fit.json").read_text())["reports"][0]["largest_k"] > 0


def test_steps_to_target_small_variant(tmp_path, mesh1):
  result = steps_to_target.study(experiment("steps_to_target").get_config("small"),
                                 str(tmp_path), mesh=mesh1)
  assert result["best"], result["runs"]
  assert {"steps_to_target.png", "noise_scale.png", "table.md"} <= set(os.listdir(tmp_path))


@pytest.mark.slow  # about 70 s: ResNet compiles
def test_resnet_steps_to_target_small_variant_tunes_on_validation(tmp_path):
  config = experiment("resnet_cifar_steps_to_target").get_config("small")
  result = steps_to_target.study(config, str(tmp_path))
  assert result["best"], result["runs"]
  for b in result["best"].values():  # two seeds each, and the test figure at the target
    assert len(b["seed_steps"]) == 2 and 0 <= b["test_at_target"] <= 1
  assert result["noise"]["checkpoints"] == []  # batch norm: no exact per-example B_simple
  assert "test at target" in (tmp_path / "table.md").read_text()


@pytest.mark.slow  # about 50 s
def test_lm_steps_to_target_small_variant(tmp_path):
  text = tmp_path / "corpus.txt"
  text.write_text("the quick brown fox jumps over the lazy dog. " * 60, encoding="utf-8")
  config = experiment("lm_steps_to_target").get_config("small")
  config.data.path = str(text)
  result = steps_to_target.study(config, str(tmp_path / "out"))
  assert result["best"], result["runs"]
  assert all(b["test_at_target"] > 0 for b in result["best"].values())  # bits per byte
  assert result["metric"] == "validation_bits_per_byte"


def test_the_lm_experiment_writes_python_docs_once_when_no_path_is_given(tmp_path):
  path = corpus.cached_python_docs(str(tmp_path))
  text = open(path, encoding="utf-8").read()
  assert len(text) > 100_000 and corpus.cached_python_docs(str(tmp_path)) == path
  assert os.path.getmtime(path) == os.path.getmtime(corpus.cached_python_docs(str(tmp_path)))


@pytest.mark.slow
def test_the_classic_sharpness_variant_measures_every_run_at_its_end(tmp_path):
  module = experiment("classic_batch_size")
  config = module.get_config("small")
  module.sharpness(config, examples=128)  # the :sharpness variant on the small sweep
  assert runner.run_sweep(config, runner.Options(str(tmp_path))) == 0
  text = (tmp_path / "summary.md").read_text()
  header, _, *rows = text.split("\n\n")[1].splitlines()
  names = [c.strip() for c in header.strip("|").split("|")]
  assert "lambda_max" in names
  for row in rows:
    cell = row.strip("|").split("|")[names.index("lambda_max")].strip()
    assert float(cell.split()[0]) > 0, row
  assert (tmp_path / "sharpness_by_k.png").is_file()


def test_edge_of_stability_draws_sharpness_over_steps(tmp_path):
  config = experiment("edge_of_stability").get_config("small")
  assert runner.run_sweep(config, runner.Options(str(tmp_path))) == 0
  assert (tmp_path / "sharpness_over_steps.png").is_file()
  assert "lr x lambda_max peaked" in (tmp_path / "summary.md").read_text()


def test_increase_batch_size_arms_match_in_epochs_and_differ_in_updates(tmp_path):
  config = experiment("increase_batch_size").get_config("small")
  assert runner.run_sweep(config, runner.Options(str(tmp_path))) == 0
  assert (tmp_path / "schedules.png").is_file()
  summary = (tmp_path / "summary.md").read_text()
  assert "| increase k | 8>40>200 |" in summary and "| hybrid | 8>40 |" in summary
  histories = summary_lib.read_results(str(tmp_path)).histories
  updates = {h.name: len(h.steps["loss"]) for h in histories}
  # 256 examples: 6 epochs of 32 updates; 2 x 32 + 2 x 7 + 2 x 2; 2 x 32 + 4 x 7.
  assert updates == {"decay lr": 192, "increase k": 82, "hybrid": 92}
  lr = {h.name: h.steps["lr"] for h in histories}
  assert lr["decay lr"][63] == pytest.approx(0.1) and lr["decay lr"][64] == pytest.approx(0.02)
  assert lr["hybrid"][77] == pytest.approx(0.1) and lr["hybrid"][78] == pytest.approx(0.02)
  assert lr["increase k"] == pytest.approx([0.1] * 82)
