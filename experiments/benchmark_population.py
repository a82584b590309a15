r"""Population training vs sequential runs: member-examples per second.

  python experiments/benchmark_population.py
  python experiments/benchmark_population.py --sizes=1,8 --batch_sizes=32 --rounds=3

MLP 784-512-512-10 on the bundled MNIST (4,000 training examples), SGD with Keras
decay. For each k it compiles one run's epoch (`Program.epoch_fn`, what
`trainer.train` runs) and the population epochs for P = 1, 4, 8, 16 members
(`population.population_epoch`, what `population.train_population` runs; learning
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
import jax.numpy as jnp
from absl import app, flags

from sgdlab import config as config_lib
from sgdlab import data, population, step, trainer

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
  """One compiled epoch and its state, timed one epoch at a time."""

  def __init__(self, epoch_fn, state, key, x, y):
    self.x, self.y, self.key, self.state = x, y, key, state
    t0 = time.perf_counter()
    self.fn = epoch_fn.lower(state, x, y, key, jnp.int32(0)).compile()
    self.compile_time = time.perf_counter() - t0
    self.wall, self.cpu, self.epoch = [], [], 0

  def run(self, timed: bool = True) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    self.state, metrics = self.fn(self.state, self.x, self.y, self.key, jnp.int32(self.epoch))
    jax.block_until_ready(metrics)
    if timed:
      self.wall.append(time.perf_counter() - wall)
      self.cpu.append(time.process_time() - cpu)
    self.epoch += 1


def main(argv: list[str]) -> None:
  del argv
  dataset = data.load(config_lib.default_config().data)
  mesh = step.make_mesh(jax.devices()[:1])
  x, y = trainer.replicate((dataset.x_train, dataset.y_train), mesh)
  n = dataset.n_train
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); n_train={n}; "
        f"median of {_ROUNDS.value} epochs; load average {os.getloadavg()[0]:.1f}\n")
  print("| k | P | population member-ex/s | sequential ex/s | speedup | cpu speedup "
        "| compile s (population / one run) |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  for k in map(int, _BATCH_SIZES.value):
    base = _config(k, 0.1, 0)
    program = trainer.build_program(base, dataset, mesh)
    single = _Variant(program.epoch_fn(), trainer.replicate(program.init_state(), mesh),
                      trainer.replicate(trainer.data_order_key(base), mesh), x, y)
    pops = {}
    for size in map(int, _SIZES.value):
      configs = [_config(k, lr, seed) for seed, lr in enumerate(_rates(size))]
      state, keys = trainer.replicate(population.init_population(program, configs), mesh)
      pops[size] = _Variant(population.population_epoch(program), state, keys, x, y)
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
