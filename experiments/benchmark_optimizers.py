r"""What AdamW, LARS and LAMB cost per update against momentum, on the MLP at k=2048.

  python experiments/benchmark_optimizers.py [--config.rounds=10] [--config.k=2048]

MLP 784-512-512-10 (no dropout), constant lr, synthetic MNIST-shaped images, one
device. Each optimizer trains whole epochs of sgdlab's Run (8 steps of k=2048), the
optimizers in turn, order rotated every round so load falls on all alike; the cost is
the median over rounds of an epoch's time over momentum's in the same round. Beside it,
the optimizer's update alone (jitted, on the model's parameters): the per-layer norms of
LARS and LAMB and Adam's second moment without the gradient around them. AdamW, LARS
and LAMB decay weights (1e-4, 1-D parameters excluded). About 3 minutes on 2 CPU
cores. The engine is sgdlab.studies.update_cost; docs/optimizers.md has the figures.

  --config=experiments/benchmark_optimizers.py:small   k=64, two optimizers, two
      rounds (seconds; what the tests run)
"""

from __future__ import annotations

import os

import ml_collections

from sgdlab import cli
from sgdlab.studies import update_cost


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The benchmark's settings; variant "small" for the tests."""
  c = ml_collections.ConfigDict(dict(
      k=2048,  # batch size
      steps_per_epoch=8,  # steps in each timed epoch
      rounds=10,  # rounds over the optimizers, each one timed epoch per optimizer
      optimizers=("momentum", "nesterov", "adam", "adamw", "lars", "lamb"),
      weight_decay=1e-4,  # of AdamW, LARS and LAMB
      update_repeats=200,  # timed calls of the update alone
  ))
  if variant == "small":
    c.k, c.steps_per_epoch, c.rounds, c.update_repeats = 64, 2, 2, 3
    c.optimizers = ("momentum", "lamb")
  return c


def main(argv: list[str]) -> None:
  del argv
  update_cost.measure(cli.config())


if __name__ == "__main__":
  cli.define_config_flags(os.path.abspath(__file__))
  cli.main(main)
