"""The steps-to-target study's pieces: the check schedule, its config checks, the fit's
table, the noise run's checkpoints and comparison rows, the lr walk, and the experiment's
command line."""

import math
import os
import subprocess
import sys

import pytest

from conftest import REPO, experiment, subprocess_env, tiny_config
from sgdlab import ConfigError, noise
from sgdlab.studies import lr_tuning, noise_run, scaling_fit, steps_config, steps_to_target


def _config(**fields):
  c = steps_config.base_config()
  base = tiny_config()
  c.data, c.model = base.data, base.model
  for key, value in fields.items():
    setattr(c.steps_to_target, key, value)
  return c


def test_the_target_is_checked_after_every_early_step_then_at_growing_gaps():
  steps = steps_to_target.eval_schedule(100, 1.5)
  assert steps[:6] == [1, 2, 3, 5, 8, 12] and steps[-1] <= 100
  assert all(b > a for a, b in zip(steps, steps[1:]))
  assert steps_to_target.eval_schedule(0, 1.5) == []


@pytest.mark.parametrize("field,value", [("metric", "test_loss"), ("target", 1.5),
                                         ("lr_factor", 1.0), ("seeds", ()),
                                         ("noise_batch_size", 30), ("batch_sizes", (400,))])
def test_bad_settings_are_one_config_error_naming_the_field(field, value):
  with pytest.raises(ConfigError, match=f"steps_to_target.{field}"):
    steps_to_target.validate(_config(**{field: value}))  # 200 examples, noise_groups 16


def test_the_default_batch_sizes_are_the_powers_of_two_and_the_whole_set():
  assert steps_config.batch_sizes(_config(), 200) == [1, 2, 4, 8, 16, 32, 64, 128, 200]
  assert steps_config.budget(_config(max_steps=50, max_examples=320).steps_to_target, 32) == 10


def test_the_best_run_per_k_and_the_fit_through_them():
  runs = [dict(k=k, learning_rate=lr, steps=s, status="reached", test_at_target=0.9)
          for k, lr, s in ((8, 0.1, 400), (8, 0.2, 375), (32, 0.2, 150), (128, 0.4, 75))]
  runs.append(dict(k=512, learning_rate=0.4, steps=None, status="diverged at step 2"))
  best = scaling_fit.best_runs(runs)
  assert {k: b["learning_rate"] for k, b in best.items()} == {8: 0.2, 32: 0.2, 128: 0.4}
  fit = scaling_fit.fit(best)
  expected = noise.fit_steps([8, 32, 128], [375, 150, 75])
  assert math.isclose(fit.b_noise, expected.b_noise) and fit.s_min > 0
  rows = scaling_fit.table([8, 32, 128, 512], runs, best, fit).splitlines()
  assert rows[2].startswith("| 8 | - | 0.2 | 375 | 3,000 |") and "0.1 (400)" in rows[2]
  assert "not reached" in rows[-1]
  assert scaling_fit.fit(dict(list(best.items())[:1])) is None


def test_checkpoints_are_epoch_zero_and_geometric_epochs():
  assert noise_run.checkpoint_epochs(4, 11) == [0, 1, 2, 5, 11]
  assert noise_run.checkpoint_epochs(0, 11) == []


def test_a_comparison_row_gives_each_estimates_error_against_exact():
  ck = dict(step=16, exact_b_simple=10.0, window_b_simple=11.0, ema_b_simple=20.0,
            probe_b_simple=9.5)
  row = noise_run.compare_row(dict(checkpoints=[dict(ck, step=0), ck]), 16, 4, 1)
  assert row == "| 16 | 4 | 1 | 16: 10; +10%, +100%, -5% | 1, 1 of 1 |"


@pytest.mark.slow  # about 40 s: three noise runs with exact B_simple at checkpoints
def test_the_noise_comparison_runs_its_grid(mesh1, capsys):
  c = _config(noise_checkpoints=2, noise_fixed_batches=2)
  rows = noise_run.compare(c, seeds=(0, 1), noise_groups=(4,), probe_batches=(0, 2),
                           batch_size=32, learning_rate=0.1, steps=12, mesh=mesh1)
  assert [r.split(" | ")[:3] for r in rows] == [["| 4", "0", "0"], ["| 4", "0", "1"],
                                                ["| 4", "2", "0"], ["| 4", "2", "1"]]
  assert rows[0].endswith(", - of 2 |") and rows[2].endswith(" of 2 |")  # probe 0: none
  assert noise_run.COMPARE_HEAD.splitlines()[0] in capsys.readouterr().out


def test_noise_table_reports_the_window_estimates():
  ck = dict(step=16, exact_b_simple=10.0, online_b_simple=10.5, online_b_simple_uncorrected=11.0,
            ema_b_simple=20.0, window_b_simple=12.0, window_two_sided_b_simple=math.nan,
            probe_b_simple=9.0)
  text = noise_run.noise_table(dict(noise_fixed_batches=400, noise_window=3, noise_half_width=2,
                                 noise_probe_batches=4, checkpoints=[ck]))
  assert "trend of last 3 steps (causal)" in text and "2 steps either side" in text
  assert "probe in training, 4 batches" in text
  assert text.splitlines()[-1] == ("| 16 | 10.0 | 10.5 (+5.0%) | 11.0 (+10.0%) | "
                                   "20.0 (+100.0%) | 12.0 (+20.0%) | - | 9.0 (-10.0%) |")


def test_lr_walk_brackets_the_best_learning_rate():
  s = experiment("steps_to_target").get_config().steps_to_target
  s.lr_factor, s.max_lrs = 2.0, 10
  calls = []

  def fake_run(lr, limit):  # steps fall with lr up to 0.4, lr > 1 diverges
    calls.append((lr, limit))
    if lr > 1:
      return dict(k=8, learning_rate=lr, steps=None, status="diverged at step 3", wall_time=0.0)
    steps = int(100 * abs(math.log2(lr / 0.4)) + 50)
    ok = steps <= limit
    return dict(k=8, learning_rate=lr, steps=steps if ok else None,
                status="reached" if ok else "not reached", wall_time=0.0)

  runs, best_j = lr_tuning.tune_k(fake_run, 8, 0.1, 0, s)
  lrs = [r["learning_rate"] for r in runs]
  assert 0.1 * 2 ** best_j == pytest.approx(0.4)
  assert sorted(lrs) == lrs and len(set(lrs)) == len(lrs)
  assert min(lrs) <= 0.2 and max(lrs) >= 0.8  # both neighbours of the best were tried
  # After the first success every run is capped at the best so far minus one.
  assert all(limit < 250 for _, limit in calls[1:])


def test_experiment_rejects_bad_settings_with_exit_code_2(tmp_path):
  script = os.path.join(REPO, "experiments", "steps_to_target.py")
  proc = subprocess.run([sys.executable, script, f"--workdir={tmp_path / 'out'}",
                         "--config.steps_to_target.metric=test_loss"],
                        capture_output=True, text=True, env=subprocess_env(1), timeout=120)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:") and "steps_to_target.metric" in lines[0]
  assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_experiment_runs_end_to_end_on_tiny_data(tmp_path):
  c = experiment("steps_to_target").get_config()
  c.data.name = "digits"
  c.model.hidden = (32,)
  c.learning_rate = 0.05
  c.steps_to_target.batch_sizes = (4, 32, 256)
  c.steps_to_target.target = 0.8
  c.steps_to_target.noise_batch_size = 32
  c.steps_to_target.noise_fixed_batches = 20
  result = steps_to_target.study(c, str(tmp_path))
  assert set(result["best"]) == {"4", "32", "256"}
  steps = [result["best"][k]["steps"] for k in ("4", "32", "256")]
  assert steps[0] > steps[2]  # more examples per step, fewer steps
  assert result["fit"]["b_noise"] > 0
  for name in ("results.json", "table.md", "steps_to_target.png", "noise_scale.png"):
    assert (tmp_path / name).stat().st_size > 0
  ckpt = result["noise"]["checkpoints"][0]
  assert abs(ckpt["online_b_simple"] / ckpt["exact_b_simple"] - 1) < 0.5
