r"""What gradient accumulation costs, and whether the fixed-k planner picks the fastest plan.

  python experiments/benchmark_accumulation.py [--repeats 3]
  python experiments/benchmark_accumulation.py --part=plans --model=cnn --k=4000 \
      --memory_budget=1GiB

Part "fits" (a k whose step fits): examples/s of the trainer's compiled epoch program
with one step per update against micro-batch k/4 (4 accumulation steps), for the MLP
(784-512-512-10) and Keras' mnist_cnn on the bundled MNIST digits (4,000), dropout off.
Part "plans" (a k whose step does not fit --memory_budget): the planner's report, then
every plan it compiled that fits is run for real, --updates optimizer updates after a
warm-up update, so its predicted seconds per update stand beside the measured ones.
One device; the trainer's own Run (sgdlab.train.run) is what is timed, median of
--repeats. Both parts run by default. Cost on a 2-core CPU: part fits ~2 minutes, part
plans at the CNN's k=4000 ~4 minutes (micro-batch 1 runs 4,000 micro-steps per update).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import jax
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=g-import-not-at-top,wrong-import-position
from throughput_loops import bench_config, load_mnist, machine_description
from sgdlab import config as config_lib
from sgdlab.memory import budget as budget_lib, plan
from sgdlab.train import run as run_lib, step

_PART = flags.DEFINE_enum("part", "all", ["all", "fits", "plans"], "Which part to run.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per configuration (median).")
_MODEL = flags.DEFINE_enum("model", "cnn", ["mlp", "cnn"], "Part plans: the model.")
_K = flags.DEFINE_integer("k", 4000, "Part plans: the fixed batch size.")
_BUDGET = flags.DEFINE_string("memory_budget", "1GiB", "Part plans: per-device budget.")
_UPDATES = flags.DEFINE_integer("updates", 2, "Part plans: timed updates per plan and call.")
_FITS = (("mlp", 256), ("mlp", 2048), ("cnn", 256))


def seconds_per_update(config, dataset, mesh, updates: int, repeats: int) -> float:
  """Median seconds per optimizer update of the trainer's compiled advance program."""
  resolved = config_lib.resolve(config, n_devices=mesh.size, spec=dataset.spec())
  run = run_lib.create_run(resolved, dataset, mesh, compile_now=False)
  updates = min(updates, run.program.steps_per_epoch)
  feed = pipeline.slice_feed(run.order(0), 0, updates)
  state = run.init_state()
  state, _ = run.advance(state, feed)  # compile and warm up
  jax.block_until_ready(state.params)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    state, _ = run.advance(state, feed)
    jax.block_until_ready(state.params)
    times.append((time.perf_counter() - t0) / updates)
  return statistics.median(times)


def part_fits(dataset, mesh, repeats: int) -> str:
  rows = [f"{'model':<6} {'k':>5} {'one step ex/s':>14} {'4 x k/4 ex/s':>13} {'ratio':>6}"]
  for model, k in _FITS:
    config = bench_config(model, k, lr=0.1, decay=1e-3, seed=0)
    updates = min(dataset.n_train // k, 8)
    one = seconds_per_update(config, dataset, mesh, updates, repeats)
    config.microbatch_size = k // 4
    acc = seconds_per_update(config, dataset, mesh, updates, repeats)
    rows.append(f"{model:<6} {k:>5} {k / one:>14,.0f} {k / acc:>13,.0f} {one / acc:>6.2f}")
  return "\n".join(rows)


def part_plans(dataset, mesh, repeats: int) -> str:
  config = bench_config(_MODEL.value, _K.value, lr=0.1, decay=1e-3, seed=0)
  config.microbatch_size = "auto"
  config.eval_batch_size = 100  # evaluation is not what is planned: keep it small
  resolved = config_lib.resolve(config, n_devices=mesh.size, spec=dataset.spec())
  report = plan.plan_microbatch(resolved, budget_lib.device_budget(mesh, _BUDGET.value),
                                mesh=mesh)
  rows = [report.table(), "",
          f"  {'micro-batch':>11} {'accum':>6} {'remat':>5} {'dtype':>8} "
          f"{'predicted s':>11} {'measured s':>10}"]
  measured = {}
  for p in report.plans:
    if not p.fits:
      continue
    fields = dict(p.fields())
    planned = config_lib.from_dict(config_lib.to_dict(config))
    for key, value in fields.items():
      config_lib.set_field(planned, key, value)
    measured[p] = seconds_per_update(planned, dataset, mesh, _UPDATES.value, repeats)
    mark = "*" if p == report.chosen else " "
    rows.append(f"{mark} {p.microbatch_size:>11} {p.accumulation_steps:>6} "
                f"{'yes' if p.remat else 'no':>5} {p.dtype:>8} {p.seconds:>11.3f} "
                f"{measured[p]:>10.3f}")
  fastest = min(measured, key=measured.get)
  rows.append(f"measured fastest: micro-batch {fastest.microbatch_size}, remat "
              f"{'on' if fastest.remat else 'off'}; the planner's pick runs at "
              f"{measured[fastest] / measured[report.chosen]:.2f}x its speed")
  return "\n".join(rows)


def main(argv: list[str]) -> None:
  del argv
  dataset = load_mnist()
  mesh = step.make_mesh(jax.devices()[:1])
  print(f"one {jax.devices()[0].device_kind} device ({machine_description()}); jax "
        f"{jax.__version__}; {dataset.n_train} MNIST training digits; median of "
        f"{_REPEATS.value} timed calls")
  if _PART.value in ("all", "fits"):
    print("\nthe cost of accumulation at a k that fits:\n" +
          part_fits(dataset, mesh, _REPEATS.value))
  if _PART.value in ("all", "plans"):
    print(f"\nk={_K.value} under {_BUDGET.value}: the plans, predicted and measured:\n" +
          part_plans(dataset, mesh, _REPEATS.value))


if __name__ == "__main__":
  app.run(main)
