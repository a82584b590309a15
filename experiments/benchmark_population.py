r"""Population training vs sequential runs: member-examples per second.

  python experiments/benchmark_population.py
  python experiments/benchmark_population.py --sizes=1,8 --batch_sizes=32 --rounds=3

MLP 784-512-512-10 on the bundled MNIST (4,000 training examples), SGD with Keras
decay. For each k it compiles one run's epoch (`Program.epoch_fn`, what
`sgdlab.train.train` runs) and the population epochs for P = 1, 4, 8, 16 members
(the vmapped Run that `sgdlab.train.train_population` builds; learning
rates from 0.5 to 0.01, one seed per member), then times whole training epochs,
alternating one epoch of each variant per round, so a change in machine load hits
all of them alike. Printed, the median over rounds of:
  population member-ex/s: P * n_train / population epoch time
  sequential ex/s:        n_train / one run's epoch time (P runs in a row: the same)
  speedup:                their ratio
  cpu speedup:            the same ratio from process CPU time, which other
                          processes on a shared machine disturb less than wall time
and the compile times (a population compiles once; P runs compile P times).
Evaluation is not timed. The population of one shows what vmap itself costs.

On a CPU the step is compute-bound and XLA's batched matmuls are slower per member
than its plain ones; on an accelerator a small model at small k leaves the chip idle
and the population fills it.
"""

from __future__ import annotations

import os
import statistics
import time

import jax
from absl import app, flags

from sgdlab import config as config_lib
from sgdlab import data
from sgdlab.train import run as run_lib
from sgdlab.train import step

_SIZES = flags.DEFINE_list("sizes", ["1", "4", "8", "16"], "Population sizes.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["32", "256"], "Batch sizes k.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed epochs per variant (after one warm-up).")


def _config(k: int, learning_rate: float, seed: int):
  c = config_lib.default_config()
  c.model.name, c.model.hidden = "mlp", (512, 512)
  c.batch_size, c.learning_rate, c.lr_decay, c.seed = k, learning_rate, 1e-3, seed
  return c


def _rates(size: int) -> list[float]:
  if size == 1:
    return [0.1]
  return [0.5 * (0.01 / 0.5) ** (i / (size - 1)) for i in range(size)]


class _Variant:
  """One Run (a single run or a population) and its state, timed one epoch at a time."""

  def __init__(self, run: run_lib.Run):
    self.runner, self.state = run, run.init_state()
    self.compile_time = run.compile_time
    self.wall, self.cpu, self.epoch = [], [], 0

  def run(self, timed: bool = True) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    self.state, metrics = self.runner.advance(self.state, self.runner.order(self.epoch))
    jax.block_until_ready(metrics)
    if timed:
      self.wall.append(time.perf_counter() - wall)
      self.cpu.append(time.process_time() - cpu)
    self.epoch += 1


def main(argv: list[str]) -> None:
  del argv
  dataset = data.load(config_lib.default_config().data)
  mesh = step.make_mesh(jax.devices()[:1])
  n = dataset.n_train
  resolve = lambda c: config_lib.resolve(c, n_devices=mesh.size, spec=dataset.spec())
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); n_train={n}; "
        f"median of {_ROUNDS.value} epochs; load average {os.getloadavg()[0]:.1f}\n")
  print("| k | P | population member-ex/s | sequential ex/s | speedup | cpu speedup "
        "| compile s (population / one run) |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  for k in map(int, _BATCH_SIZES.value):
    single = _Variant(run_lib.create_run(resolve(_config(k, 0.1, 0)), dataset, mesh))
    pops = {}
    for size in map(int, _SIZES.value):
      members = [resolve(_config(k, lr, seed)) for seed, lr in enumerate(_rates(size))]
      pops[size] = _Variant(run_lib.create_run(members, dataset, mesh))
    variants = [single, *pops.values()]
    for v in variants:
      v.run(timed=False)
    for _ in range(_ROUNDS.value):
      for v in variants:
        v.run()
    seq_wall, seq_cpu = statistics.median(single.wall), statistics.median(single.cpu)
    for size, v in pops.items():
      wall, cpu = statistics.median(v.wall), statistics.median(v.cpu)
      print(f"| {k} | {size} | {size * n / wall:,.0f} | {n / seq_wall:,.0f} "
            f"| {size * seq_wall / wall:.2f}x | {size * seq_cpu / cpu:.2f}x "
            f"| {v.compile_time:.2f} / {single.compile_time:.2f} |", flush=True)
  print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  app.run(main)
