"""Population training vs sequential runs: member-examples per second.

For each k, one run's Run and the population Runs of P members (the vmapped program
`sgdlab.train_population` builds; learning rates from 0.5 to 0.01, one seed per
member), timed over whole training epochs (`bench.RunEpochs`), one epoch of each
variant per round, so a change in machine load hits all of them alike. The population
of one shows what vmap itself costs. On a CPU the step is compute-bound and XLA's
batched matmuls are slower per member than its plain ones; on an accelerator a small
model at small k leaves the chip idle and the population fills it.
"""

from __future__ import annotations

import os
import statistics

import jax
import ml_collections

from sgdlab import config as config_lib
from sgdlab.studies import bench
from sgdlab.train import step


def member_config(k: int, learning_rate: float, seed: int,
                  hidden: tuple[int, ...] = (512, 512)) -> ml_collections.ConfigDict:
  c = config_lib.default_config()
  c.model.name, c.model.hidden = "mlp", tuple(hidden)
  c.batch_size, c.learning_rate, c.lr_decay, c.seed = k, learning_rate, 1e-3, seed
  return c


def rates(size: int) -> list[float]:
  """The members' learning rates: 0.5 down to 0.01 geometrically (one member: 0.1)."""
  if size == 1:
    return [0.1]
  return [0.5 * (0.01 / 0.5) ** (i / (size - 1)) for i in range(size)]


def measure(config: ml_collections.ConfigDict) -> list[str]:
  """The benchmark a config describes (experiments/benchmark_population.py), printed."""
  c = config
  dataset = bench.load_mnist()
  if c.n_train:
    dataset = bench.tiled(dataset, c.n_train)
  mesh = step.make_mesh(jax.devices()[:1])
  n = dataset.n_train
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); n_train={n}; "
        f"median of {c.rounds} epochs; load average {os.getloadavg()[0]:.1f}\n")
  print("| k | P | population member-ex/s | sequential ex/s | speedup | cpu speedup "
        "| compile s (population / one run) |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  rows = []
  for k in c.batch_sizes:
    loops = {"one": bench.RunEpochs(bench.create(member_config(k, 0.1, 0, c.hidden),
                                                 dataset, mesh))}
    for size in c.sizes:
      members = [member_config(k, lr, seed, c.hidden) for seed, lr in enumerate(rates(size))]
      loops[size] = bench.RunEpochs(bench.create(members, dataset, mesh))
    for loop in loops.values():
      loop.run_epoch(0)  # warm-up
    t = bench.alternate(loops, c.rounds)
    seq_wall, seq_cpu = statistics.median(t.wall["one"]), statistics.median(t.cpu["one"])
    for size in c.sizes:
      wall, cpu = statistics.median(t.wall[size]), statistics.median(t.cpu[size])
      rows.append(f"| {k} | {size} | {size * n / wall:,.0f} | {n / seq_wall:,.0f} "
                  f"| {size * seq_wall / wall:.2f}x | {size * seq_cpu / cpu:.2f}x "
                  f"| {loops[size].run.compile_time:.2f} / "
                  f"{loops['one'].run.compile_time:.2f} |")
      print(rows[-1], flush=True)
  print(f"\nload average after: {os.getloadavg()[0]:.1f}")
  return rows
