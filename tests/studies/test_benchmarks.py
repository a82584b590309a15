"""Each benchmark's small variant runs through the harness and reports what it promises.

No speed is asserted (the benchmarks report it); what is checked is that each setting
ran, gave positive rates, and trained what it should (equal parameters where the
settings see the same batches).
"""

import pytest

from conftest import experiment
from sgdlab.studies import (accumulation, conv_parts, noise_cost, pipelines, population_speed,
                            hvp_cost, update_cost)


def _config(name, variant="small"):
  return experiment(name).get_config(variant)


def _rate(cell):
  return float(cell.split()[0].replace(",", "").rstrip("x"))


def test_population_against_sequential_runs():
  rows = population_speed.measure(_config("benchmark_population"))
  assert [r.split(" | ")[:2] for r in rows] == [["| 128", "1"], ["| 128", "2"]]
  for row in rows:
    cells = row.strip("| ").split(" | ")
    assert all(_rate(c) > 0 for c in cells[2:6]), row
  assert population_speed.rates(3) == pytest.approx([0.5, 0.5 * 0.02 ** 0.5, 0.01])


@pytest.mark.slow
def test_the_noise_estimate_does_not_change_training():
  (row,) = noise_cost.measure(_config("benchmark_noise_overhead"))
  cells = row.strip("| ").split(" | ")
  assert cells[0] == "256" and _rate(cells[1]) > 0 and _rate(cells[2]) > 0
  assert float(cells[-1]) < 1e-6  # max parameter difference after the warm-up epoch


def test_accumulation_part_fits():
  out = accumulation.measure(_config("benchmark_accumulation"))
  (row,) = out["fits"].splitlines()[1:]
  model, k, one, acc, ratio = row.split()
  assert (model, k) == ("mlp", "256") and _rate(one) > 0 and _rate(acc) > 0
  assert float(ratio) > 0 and "plans" not in out


@pytest.mark.slow  # about 30 s: three settings, two of them streamed from IDX files
def test_pipelines_train_the_same_parameters():
  out = pipelines.measure(_config("benchmark_pipeline"))
  assert out["mlp"]["same"] == "yes"
  assert all(_rate(out["mlp"][name]) > 0 for name, _, _ in pipelines.SETTINGS)


@pytest.mark.slow  # XLA's kernel gradient in a scan compiles slowly
def test_conv_parts_time_every_form():
  cells = conv_parts.measure(_config("benchmark_conv"))
  assert len(cells) == 10 and all(ms > 0 for ms in cells.values())


def test_optimizer_update_cost_reports_every_optimizer_against_momentum():

  rows = update_cost.measure(_config("benchmark_optimizers"))
  assert [r.split(" | ")[0] for r in rows] == ["| momentum", "| lamb"]
  base = rows[0].strip("| ").split(" | ")
  assert base[2].startswith("1.000x") and base[4] == "1.00x"  # momentum against itself
  for row in rows:
    cells = row.strip("| ").split(" | ")
    assert float(cells[1]) > 0 and float(cells[3]) > 0, row


def test_hvp_cost_reports_gradient_hvp_and_lanczos():
  (row,) = hvp_cost.measure(_config("benchmark_hvp"))
  cells = row.strip("| ").split(" | ")
  assert cells[0] == "mlp" and cells[1] == f"{784 * 512 + 512 + 512 * 512 + 512 + 5130:,}"
  assert all(float(c.split("x")[0].replace(",", "")) > 0 for c in cells[2:])
