"""What gradient accumulation costs, and whether the fixed-k planner picks the fastest plan.

Part "fits" (a k whose step fits): seconds per optimizer update of the trainer's Run
over whole epochs with one step per update against micro-batch k/4 (4 accumulation
steps). Part "plans" (a k whose step does not fit the budget): the planner's report
(`sgdlab.memory.plan.plan_microbatch`), then every plan it compiled that fits is run
for real, so its predicted seconds per update stand beside the measured ones.
"""

from __future__ import annotations

import jax
import ml_collections

from sgdlab import config as config_lib
from sgdlab import data
from sgdlab.memory import budget as budget_lib, plan
from sgdlab.studies import bench
from sgdlab.train import step


def seconds_per_update(config: ml_collections.ConfigDict, dataset: data.Dataset, mesh,
                       repeats: int) -> float:
  """Median seconds per optimizer update over `repeats` whole epochs after a warm-up one."""
  run = bench.create(config, dataset, mesh, compile_now=False)
  return bench.epoch_seconds(run, repeats) / run.program.steps_per_epoch


def part_fits(config: ml_collections.ConfigDict, dataset: data.Dataset, mesh) -> str:
  rows = [f"{'model':<6} {'k':>5} {'one step ex/s':>14} {'4 x k/4 ex/s':>13} {'ratio':>6}"]
  for model, k in config.fits:
    c = bench.bench_config(model, k, lr=0.1, decay=1e-3, seed=0, hidden=config.hidden)
    one = seconds_per_update(c, dataset, mesh, config.repeats)
    c.microbatch_size = k // 4
    acc = seconds_per_update(c, dataset, mesh, config.repeats)
    rows.append(f"{model:<6} {k:>5} {k / one:>14,.0f} {k / acc:>13,.0f} {one / acc:>6.2f}")
  return "\n".join(rows)


def part_plans(config: ml_collections.ConfigDict, dataset: data.Dataset, mesh) -> str:
  c = bench.bench_config(config.model, config.k, lr=0.1, decay=1e-3, seed=0,
                         hidden=config.hidden)
  c.microbatch_size = "auto"
  c.eval_batch_size = 100  # evaluation is not what is planned: keep it small
  resolved = config_lib.resolve(c, n_devices=mesh.size, spec=dataset.spec())
  report = plan.plan_microbatch(resolved, budget_lib.device_budget(mesh, config.memory_budget),
                                mesh=mesh)
  rows = [report.table(), "",
          f"  {'micro-batch':>11} {'accum':>6} {'remat':>5} {'dtype':>8} "
          f"{'predicted s':>11} {'measured s':>10}"]
  measured = {}
  for p in report.plans:
    if not p.fits:
      continue
    planned = config_lib.from_dict(config_lib.to_dict(c))
    for key, value in p.fields().items():
      config_lib.set_field(planned, key, value)
    measured[p] = seconds_per_update(planned, dataset, mesh, config.repeats)
    mark = "*" if p == report.chosen else " "
    rows.append(f"{mark} {p.microbatch_size:>11} {p.accumulation_steps:>6} "
                f"{'yes' if p.remat else 'no':>5} {p.dtype:>8} {p.seconds:>11.3f} "
                f"{measured[p]:>10.3f}")
  fastest = min(measured, key=measured.get)
  rows.append(f"measured fastest: micro-batch {fastest.microbatch_size}, remat "
              f"{'on' if fastest.remat else 'off'}; the planner's pick runs at "
              f"{measured[fastest] / measured[report.chosen]:.2f}x its speed")
  return "\n".join(rows)


def measure(config: ml_collections.ConfigDict) -> dict[str, str]:
  """The benchmark a config describes (experiments/benchmark_accumulation.py), printed."""
  dataset = bench.load_mnist()
  mesh = step.make_mesh(jax.devices()[:1])
  print(f"one {jax.devices()[0].device_kind} device ({bench.machine_description()}); jax "
        f"{jax.__version__}; {dataset.n_train} MNIST training digits; median of "
        f"{config.repeats} timed epochs")
  out = {}
  if config.part in ("all", "fits"):
    out["fits"] = part_fits(config, dataset, mesh)
    print("\nthe cost of accumulation at a k that fits:\n" + out["fits"])
  if config.part in ("all", "plans"):
    out["plans"] = part_plans(config, dataset, mesh)
    print(f"\nk={config.k} under {config.memory_budget}: the plans, predicted and "
          f"measured:\n" + out["plans"])
  return out
