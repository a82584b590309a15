r"""What changing k between epochs costs, against compiling the new k's program once.

  python experiments/benchmark_k_change.py

The MLP 784-512-512-10 on the 4,000 bundled MNIST digits, plain SGD, k = 32, 160, 800
for 3 epochs each (config.batch_size_schedule), one device. Per change: the change
epoch's wall time beyond the median of the other epochs at that k, and the time to
compile that k's epoch program alone. About 30 s on 2 CPU cores; docs/batch_size_schedule.md
has the figures. The engine is sgdlab.studies.k_change_cost.

  --config=experiments/benchmark_k_change.py:small   tiny synthetic data, 2 epochs a k
      (seconds; what the tests run)
"""

from __future__ import annotations

import os

import ml_collections

from sgdlab import cli
from sgdlab.config import default_config
from sgdlab.studies import k_change_cost


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The benchmark's run; variant "small" for the tests."""
  c = default_config()
  c.model.dropout, c.optimizer.name, c.lr_decay, c.learning_rate = 0.0, "sgd", 0.0, 0.1
  c.batch_size, c.num_epochs = 32, 9
  c.batch_size_schedule.boundaries, c.batch_size_schedule.sizes = (3, 6), (160, 800)
  if variant == "small":
    c.data.name = "synthetic"
    c.data.synthetic_n_train, c.data.synthetic_n_test = 256, 64
    c.data.synthetic_input_shape = (6, 6, 1)
    c.model.hidden, c.batch_size, c.num_epochs = (16,), 8, 6
    c.batch_size_schedule.boundaries, c.batch_size_schedule.sizes = (2, 4), (32, 128)
  return c


def main(argv: list[str]) -> None:
  del argv
  k_change_cost.measure(cli.config())


if __name__ == "__main__":
  cli.define_config_flags(os.path.abspath(__file__))
  cli.main(main)
