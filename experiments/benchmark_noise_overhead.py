r"""What the online noise-scale estimate costs: examples/s with noise_scale on and off.

  python experiments/benchmark_noise_overhead.py [--config.batch_sizes="(32, 256, 2048)"]
      [--config.repeats=5] [--config.noise_groups=16]

MLP 784-512-512-10 (no dropout), SGD, the 4,000 bundled MNIST training digits, one
device by default (--config.devices=N uses N devices; for fake CPU devices set
XLA_FLAGS=--xla_force_host_platform_device_count=N first). Each configuration is
sgdlab's own Run over whole epochs, with the host sync the loop does per epoch
(sgdlab.studies.bench); evaluation is left out. With noise_scale=True, one device
computes the gradient of each half of the batch separately (one after the other;
noise_groups=G: of G parts) and the step returns two more squared norms; on n devices
it returns each device's local norm. The host side (the loop's own per-step estimates
and EMA, `sgdlab.train.records.append_steps`) is timed too.

Compilation and a warm-up epoch are not timed. On and off alternate, order swapped
every repeat, so load from other processes falls on both. The table gives median
examples/s over all timed epochs with the (min-max) spread, and the median (range)
of the per-repeat ratios on / off. The parameters after the warm-up epoch are
compared too: the estimate must not change training. Its cost on 2 CPU cores is not
yet timed on a quiet machine: per k, 2 x (1 + epochs x repeats) epochs.
--config=experiments/benchmark_noise_overhead.py:small: k=256, one epoch a repeat
(seconds; what the tests run). The engine is sgdlab.studies.noise_cost.
"""

from __future__ import annotations

import os

import ml_collections

from sgdlab import cli
from sgdlab.studies import noise_cost


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The benchmark's settings; variant "small" for the tests."""
  c = ml_collections.ConfigDict(dict(
      epochs=3,  # timed epochs per setting per repeat
      repeats=5,  # rounds over on/off, order swapped each
      batch_sizes=(32, 256, 2048),
      devices=1,  # devices in the mesh
      learning_rate=0.1,  # constant SGD learning rate
      noise_groups=0,  # config.noise_groups of the "on" runs (0: two halves)
  ))
  if variant == "small":
    c.batch_sizes, c.epochs, c.repeats = (256,), 1, 2
  return c


def main(argv: list[str]) -> None:
  del argv
  noise_cost.measure(cli.config())


if __name__ == "__main__":
  cli.define_config_flags(os.path.abspath(__file__))
  cli.main(main)
