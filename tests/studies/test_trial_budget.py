"""The trial-budget protocol (Shallue et al. 2018; AlgoPerf): studies of N trials, each
trial's limit the study's best so far, infeasible trials kept, the median of the studies'
bests, the fits; and the optimizers-across-k experiment end to end on tiny data."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, experiment, subprocess_env
from sgdlab import ConfigError
from sgdlab.studies import trial_budget


def _fake_runs(steps_by_lr):
  """run_trial for a problem whose steps to target are known per lr (None: diverges)."""
  calls = []

  def run_trial(trial, limit):
    calls.append((trial["learning_rate"], limit))
    s = steps_by_lr[trial["learning_rate"]]
    if s is None:
      return dict(steps=None, status="diverged at step 3", wall_time=0.0)
    if s > limit:
      return dict(steps=None, status=f"not reached in {limit} steps", wall_time=0.0)
    return dict(steps=s, status="reached", wall_time=0.0)

  return run_trial, calls


def test_a_study_caps_each_trial_at_its_best_so_far_and_keeps_infeasible_trials():
  steps = {0.1: 50, 0.2: None, 0.3: 40, 0.4: 60, 1.0: 30, 2.0: None}
  run_trial, calls = _fake_runs(steps)
  trials = [dict(learning_rate=lr) for lr in (0.1, 0.2, 0.3, 0.4, 1.0, 2.0)]
  records = trial_budget.tune(run_trial, trials, 3, 100)
  # Study 0: 0.1 (limit 100) reaches 50, 0.2 (limit 49) diverges, 0.3 (limit 49) 40.
  # Study 1 starts afresh at the full limit.
  assert calls == [(0.1, 100), (0.2, 49), (0.3, 49), (0.4, 100), (1.0, 59), (2.0, 29)]
  assert [r["study"] for r in records] == [0, 0, 0, 1, 1, 1]
  assert [r["status"].split()[0] for r in records] == ["reached", "diverged", "reached",
                                                      "reached", "reached", "diverged"]
  assert trial_budget.best_so_far(records, 3) == [[50, 50, 40], [60, 30, 30]]
  cell = trial_budget.score(records, 3)
  assert cell["steps"] == 35.0 and cell["study_bests"] == [40, 30]
  assert cell["infeasible"] == 2 and cell["trials"] == 6
  assert cell["best"]["overrides"] == dict(learning_rate=1.0)


def test_a_cell_half_of_whose_studies_reached_nothing_is_not_reached():
  run_trial, _ = _fake_runs({0.1: None, 0.2: 10})
  records = trial_budget.tune(run_trial, [dict(learning_rate=0.1), dict(learning_rate=0.2)],
                              1, 100)
  cell = trial_budget.score(records, 1)
  assert math.isinf(cell["steps"]) and cell["study_bests"] == [math.inf, 10]


def test_the_fit_per_optimizer_uses_its_finite_cells_only():
  cell = lambda s: dict(steps=s, study_bests=[s], infeasible=0, trials=1, best=None)
  cells = {"a": {16: cell(400.0), 64: cell(130.0), 256: cell(70.0), 1024: cell(math.inf)},
           "b": {16: cell(300.0), 64: cell(math.inf)}}
  fits = trial_budget.fits(cells)
  assert fits["b"] is None and fits["a"]["b_noise"] > 0
  text = trial_budget.table(cells, fits)
  assert "| a | 1024 | not reached | - | 0/1 | - |" in text
  assert "| b | - | - | - | - | fewer than two k reached |" in text


def test_each_study_gets_its_own_b_noise():
  # Study 0 follows S = 40 (1 + 100 / k) exactly, study 1 S = 40 (1 + 25 / k); in "b" a
  # third study reached only k=16, so it has no fit of its own.
  cell = lambda *bests: dict(steps=float(np.median(bests)), study_bests=list(bests),
                             infeasible=0, trials=len(bests), best=None)
  s = lambda b_noise, k: 40.0 * (1 + b_noise / k)
  cells = {"a": {k: cell(s(100, k), s(25, k)) for k in (16, 64, 256)},
           "b": {k: cell(s(100, k), s(100, k), s(25, k) if k == 16 else math.inf)
                 for k in (16, 64, 256)}}
  fits = trial_budget.fits(cells)
  assert fits["a"]["study_b_noise"] == pytest.approx([100, 25], rel=1e-3)
  assert fits["b"]["study_b_noise"][:2] == pytest.approx([100, 100], rel=1e-3)
  assert fits["b"]["study_b_noise"][2] is None
  assert "| 100, 100, - |" in trial_budget.table(cells, fits)


def test_every_k_gets_the_same_draws_and_each_trial_names_its_optimizer():
  c = experiment("optimizers_across_k").get_config("small")
  draws = trial_budget.draws(c.trial_budget, "momentum")
  assert len(draws) == c.trial_budget.trials * c.trial_budget.studies
  assert all(d["optimizer.name"] == "momentum" for d in draws)
  assert draws == trial_budget.draws(c.trial_budget, "momentum")
  lr = c.trial_budget.spaces.momentum.learning_rate
  assert all(lr.min <= d["learning_rate"] <= lr.max for d in draws)


@pytest.mark.parametrize("field,value,match", [
    ("trials", 0, "trial_budget.trials"), ("studies", -1, "trial_budget.studies"),
    ("optimizers", ("momentum", "adagrad"), "trial_budget.optimizers")])
def test_bad_budgets_are_one_config_error_naming_the_field(field, value, match):
  c = experiment("optimizers_across_k").get_config("small")
  c.trial_budget[field] = value
  with pytest.raises(ConfigError, match=match):
    trial_budget.validate(c)


@pytest.mark.slow  # the engine's paths: the tests above
def test_the_experiment_runs_end_to_end_and_writes_its_table_and_figures(tmp_path):
  r = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "optimizers_across_k.py"),
                      "--config=" + os.path.join(REPO, "experiments", "optimizers_across_k.py")
                      + ":small", f"--workdir={tmp_path}"],
                     capture_output=True, text=True, env=subprocess_env(1), timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert sorted(os.listdir(tmp_path)) == ["cells", "results.json", "steps_by_optimizer.png",
                                          "table.md", "trial_budget.png"]
  result = json.loads((tmp_path / "results.json").read_text())
  assert set(result["cells"]) == {"momentum", "lamb"}
  assert len(result["trials"]) == 2 * 2 * 2 * 2  # optimizers x k x trials x studies
  assert {t["optimizer"] for t in result["trials"]} == {"momentum", "lamb"}
  assert all(t["status"] for t in result["trials"])
  assert "| momentum | 16 |" in (tmp_path / "table.md").read_text()


def test_a_killed_study_resumes_at_its_first_unfinished_cell(tmp_path):
  config = experiment("optimizers_across_k").get_config("small")
  made = []

  def make_runner(c, k):  # steps fall with the lr: every trial's outcome is known
    made.append((c.optimizer.name, k))
    return lambda lr, limit: dict(steps=int(10 / lr) if 10 / lr <= limit else None,
                                  status="reached" if 10 / lr <= limit else "not reached",
                                  wall_time=0.0, learning_rate=lr)

  cell_dir = str(tmp_path / "cells")
  first, records = trial_budget.study_cells(config, make_runner, (16, 64), cell_dir)
  assert sorted(os.listdir(cell_dir)) == ["lamb_k16.json", "lamb_k64.json",
                                          "momentum_k16.json", "momentum_k64.json"]
  os.remove(os.path.join(cell_dir, "lamb_k64.json"))  # as if killed in the last cell
  made.clear()
  again, records_again = trial_budget.study_cells(config, make_runner, (16, 64), cell_dir)
  assert {name for name, _ in made} == {"lamb"} and {k for _, k in made} == {64}
  dump = lambda x: json.dumps(x, default=str, sort_keys=True)
  assert dump(again) == dump(first)
  assert [r["steps"] for r in records_again] == [r["steps"] for r in records]
  config.trial_budget.seed += 1  # other settings: nothing is reused
  made.clear()
  trial_budget.study_cells(config, make_runner, (16,), cell_dir)
  assert len(made) >= 2


def test_a_run_is_built_once_per_setting_of_the_fields_besides_the_lr():
  config = experiment("optimizers_across_k").get_config("small")
  made, ran = [], []

  def make_runner(c, k):
    made.append((float(c.optimizer.momentum), k))
    return lambda lr, limit: ran.append((float(c.optimizer.momentum), lr)) or dict(steps=1)

  run_trial = trial_budget.trial_runner(config, make_runner, 16)
  for trial in ({"learning_rate": 0.1}, {"learning_rate": 0.2},  # the lr only: one Run
                {"learning_rate": 0.3, "optimizer.momentum": 0.5},
                {"learning_rate": 0.4, "optimizer.momentum": 0.5},
                {"learning_rate": 0.5, "optimizer.momentum": 0.8}):
    run_trial(trial, 10)
  assert made == [(0.9, 16), (0.5, 16), (0.8, 16)]
  assert ran == [(0.9, 0.1), (0.9, 0.2), (0.5, 0.3), (0.5, 0.4), (0.8, 0.5)]
