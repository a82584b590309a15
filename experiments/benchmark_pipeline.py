r"""The two input pipelines side by side: examples/s with resident arrays and with grain.

  python experiments/benchmark_pipeline.py [--config.models="('mlp', 'cnn')"] \
      [--config.batch_size=256] [--config.epochs=3] [--config.repeats=3]

The 4,000 bundled MNIST training digits, written once as plain IDX files (uint8) to a
temporary folder, so that "grain" really reads from disk: memory-mapped pages, scaled
to [0, 1] per batch. Per model (MLP 784-512-512-10; the Keras MNIST CNN, dropout off)
and k (256 by default), the trainer's own Run is driven as the loop drives it
(sgdlab.studies.bench): each epoch's calls of `steps_per_call` steps, then one host sync.
  device        the dataset resident on the device, one call per epoch (the default)
  grain, 1      streamed, one step per call (the grain default): a batch is read while
                the step before it runs
  grain, epoch  streamed, one call per epoch: the epoch's batches read, then one scan
Compilation and a warm-up epoch are not timed; evaluation is left out. Settings
alternate within each repeat, so load from other processes falls on all of them. The
table gives median examples/s over all timed epochs with the (min-max) spread; the
final parameters of every setting are compared with the device pipeline's (they are
the same batches, so they must be equal). Its cost on 2 CPU cores is not yet timed on
a quiet machine: 3 settings x (1 + epochs x repeats) epochs per model plus compilation
(the CNN read one step per call is the slow setting). --config=experiments/benchmark_pipeline.py:small:
the MLP on 512 examples at k=128, one epoch each (what the tests run). The engine is
sgdlab.studies.pipelines.
"""

from __future__ import annotations

import os

import ml_collections

from sgdlab import cli
from sgdlab.studies import pipelines


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The benchmark's settings; variant "small" for the tests."""
  c = ml_collections.ConfigDict(dict(
      models=("mlp", "cnn"),
      batch_size=256,  # k
      epochs=3,  # timed epochs per setting per repeat
      repeats=3,  # rounds over the settings, order reversed every other one
      n_train=0,  # training examples (0 = all 4,000)
  ))
  if variant == "small":
    c.models, c.batch_size, c.n_train, c.epochs, c.repeats = ("mlp",), 128, 512, 1, 1
  return c


def main(argv: list[str]) -> None:
  del argv
  pipelines.measure(cli.config())


if __name__ == "__main__":
  cli.define_config_flags(os.path.abspath(__file__))
  cli.main(main)
