r"""Population training vs sequential runs: member-examples per second.

  python experiments/benchmark_population.py
  python experiments/benchmark_population.py --config.sizes="(1, 8)" \
      --config.batch_sizes="(32,)" --config.rounds=3

MLP 784-512-512-10 on the bundled MNIST (4,000 training examples), SGD with Keras
decay. For each k it compiles one run's Run (what `sgdlab.train` runs) and the
population Runs for P = 1, 4, 8, 16 members
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
and the population fills it. Its cost on 2 CPU cores is not yet timed on a quiet
machine: per k, (1 + rounds) epochs of one run and of each population.
--config=experiments/benchmark_population.py:small: P = 1, 2 of a small MLP at k=128 on
512 examples (seconds; what the tests run). The engine is sgdlab.studies.population_speed.
"""

from __future__ import annotations

import os

import ml_collections

from sgdlab import cli
from sgdlab.studies import population_speed


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The benchmark's settings; variant "small" for the tests."""
  c = ml_collections.ConfigDict(dict(
      sizes=(1, 4, 8, 16),  # population sizes P
      batch_sizes=(32, 256),
      rounds=5,  # timed epochs per variant (after one warm-up)
      hidden=(512, 512),  # the MLP's widths
      n_train=0,  # training examples per epoch: 0 = the 4,000 bundled digits
  ))
  if variant == "small":
    c.sizes, c.batch_sizes, c.rounds, c.hidden, c.n_train = (1, 2), (128,), 1, (32,), 512
  return c


def main(argv: list[str]) -> None:
  del argv
  population_speed.measure(cli.config())


if __name__ == "__main__":
  cli.define_config_flags(os.path.abspath(__file__))
  cli.main(main)
