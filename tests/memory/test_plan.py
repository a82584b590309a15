"""The fixed-k planner: k never changes, the plan chosen fits, and it really runs there.

The real out-of-memory checks run the trainer in a child under an address-space limit
(tests/memory_support.py) at a k whose one-step program needs more than the limit allows.
"""

from __future__ import annotations

import concurrent.futures
import json

import ml_collections
import pytest

from conftest import tiny_config
from memory_support import GiB, budget, fit_cli, oom_config, train_under_limit
from sgdlab import config as config_lib
from sgdlab.errors import ConfigError
from sgdlab.memory import estimator, plan, trials
from sgdlab.sweep import runner
from sgdlab import trainer

K = 8192


def _fixed_k(model: str, **fields):
  config = oom_config(model)
  config.batch_size, config.microbatch_size = K, "auto"
  for key, value in fields.items():
    config_lib.set_field(config, key, value)
  return config


def _one_step_bytes(config, mesh) -> int:
  """Per-device bytes of the trainer at k with no accumulation."""
  plain = config_lib.resolve(config, n_devices=mesh.size).with_fields(microbatch_size=0)
  return estimator.Estimator(plain, mesh).total(K)


def test_the_plan_keeps_k_fits_and_is_the_cheapest_that_fits(mesh1):
  config = _fixed_k("mlp")
  need = _one_step_bytes(config, mesh1)
  b = budget(need // 2)
  report = plan.plan_microbatch(config_lib.resolve(config, n_devices=1), b, mesh=mesh1)
  chosen = report.chosen
  assert chosen.fits and chosen.bytes <= b.usable < need
  assert chosen.accumulation_steps > 1 and chosen.microbatch_size * chosen.accumulation_steps == K
  fitting = [p for p in report.plans if p.fits]
  assert chosen.seconds == min(p.seconds for p in fitting)
  assert all(p.seconds is None for p in report.plans if not p.fits)
  # Remat recomputes the forward pass: never predicted cheaper at the same micro-batch.
  for p in fitting:
    twin = [q for q in fitting if q.remat != p.remat and q.microbatch_size == p.microbatch_size]
    if twin and p.remat:
      assert p.seconds > twin[0].seconds
  applied = plan.apply(config_lib.resolve(config, n_devices=1), report)
  assert applied.batch_size == K and applied.accumulation_steps == chosen.accumulation_steps
  table = report.table()
  assert table.count("\n*") == 1 and "predicted s/update" in table


def test_given_fields_are_kept_and_only_auto_ones_searched(mesh1):
  config = _fixed_k("mlp", microbatch_size=1024, dtype="auto")
  report = plan.plan_microbatch(config_lib.resolve(config, n_devices=1), budget(8 * GiB),
                                mesh=mesh1)
  assert {(p.microbatch_size, p.remat) for p in report.plans} == {(1024, False)}
  assert {p.dtype for p in report.plans} == {"float32", "bfloat16"}


def test_no_plan_fits_names_the_field(mesh1):
  resolved = config_lib.resolve(_fixed_k("mlp", eval_batch_size=1), n_devices=1)
  one = estimator.Estimator(resolved.with_fields(microbatch_size=1), mesh1)
  fixed = one.with_reserve(one.data_bytes + one.state_bytes)
  cases = [(fixed // 2, "Nothing fits: the parameters"),  # below the fixed parts
           ((fixed + one.total(K)) // 2, "no plan for k=8192 fits")]  # below micro-batch 1
  for usable, message in cases:
    with pytest.raises(ConfigError, match=message) as e:
      plan.plan_microbatch(resolved, budget(int(usable / 0.9)), mesh=mesh1)
    assert e.value.field == "memory_budget"
  # An evaluation too large for the budget is named as such, before any plan.
  with pytest.raises(ConfigError) as e:
    plan.plan_microbatch(resolved.with_fields(eval_batch_size=4096),
                         budget(int(one.total(K) / 0.9) + 1), mesh=mesh1)
  assert e.value.field == "eval_batch_size"


def _planned_run_under_limit(model: str, fraction: float, mesh) -> None:
  """At a budget that one step at k exceeds: the plain step runs out of memory for real,
  and the trainer with microbatch_size="auto" plans within it and trains to the end."""
  config = _fixed_k(model)
  budget_bytes = int(_one_step_bytes(config, mesh) * fraction)
  plain = config_lib.from_dict(config_lib.to_dict(config))
  plain.microbatch_size = 0
  one_step = trials.run_trial(plain, K, budget_bytes=budget_bytes, steps=1, timeout=600)
  assert not one_step.ok and one_step.oom, one_step
  result = train_under_limit(config, budget_bytes)
  assert result["config"]["batch_size"] == K and result["epochs"] == config.num_epochs
  micro = result["config"]["microbatch_size"]
  assert isinstance(micro, int) and 0 < micro < K and result["acc"] > 0


@pytest.mark.parametrize("cases", [
    [("mlp", 0.5)],
    pytest.param([(m, f) for f in (0.5, 0.3) for m in ("mlp", "cnn")], marks=pytest.mark.slow)])
def test_the_planned_micro_batch_trains_where_one_step_runs_out_of_memory(cases, mesh1):
  """The MLP at one budget in the default suite; MLP and CNN at two each with -m slow."""
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    list(pool.map(lambda case: _planned_run_under_limit(*case, mesh1), cases))


@pytest.mark.slow
def test_launcher_prints_the_plans_and_marks_the_chosen_one(tmp_path):
  out = tmp_path / "fit"
  r = fit_cli(tmp_path, "--memory_budget=300MiB", "--config.batch_size=512",
           "--config.microbatch_size=auto", f"--workdir={out}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "k=512 fixed" in r.stdout and r.stdout.count("\n*") == 1
  result = json.loads((out / "fit.json").read_text())
  assert result["method"] == "plan" and result["plan"]["k"] == 512
  assert result["plan"]["chosen"] in result["plan"]["plans"]
  assert (out / "fit.png").stat().st_size > 0


def _count_plans(monkeypatch) -> list:
  calls, real = [], plan.plan_microbatch
  monkeypatch.setattr(plan, "plan_microbatch", lambda *a, **k: calls.append(1) or real(*a, **k))
  return calls


def test_population_members_share_one_plan(mesh1, monkeypatch):
  calls = _count_plans(monkeypatch)
  configs = [tiny_config(microbatch_size="auto", memory_budget="2GiB", learning_rate=lr,
                         num_epochs=1) for lr in (0.1, 0.2)]
  histories = trainer.train_population(configs, mesh=mesh1)
  assert len(calls) == 1
  assert histories[0].config["microbatch_size"] == histories[1].config["microbatch_size"]


def test_a_sweep_plans_once_per_shared_config_before_anything_runs(mesh1, monkeypatch):
  calls = _count_plans(monkeypatch)
  config = tiny_config(microbatch_size="auto", memory_budget="2GiB")
  config.sweep.product = ml_collections.ConfigDict(
      dict(learning_rate=(0.1, 0.2, 0.4)))
  points = runner.resolve_points(config, mesh1)
  assert len(points) == 3 and len(calls) == 1  # one plan, shared by the learning rates
  assert all(isinstance(p.resolved.config.microbatch_size, int) for p in points)
