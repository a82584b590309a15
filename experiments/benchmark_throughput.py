r"""Throughput of sgdlab's compiled training against hand-written JAX loops and PyTorch.

  python experiments/benchmark_throughput.py [--config.model=cnn] [--config.epochs=3] \
      [--config.repeats=5] [--config.batch_sizes="(32, 256, 2048)"]

--model=mlp: MLP 784-512-512-10 on the 4,000 bundled MNIST training digits, an epoch
each. --model=cnn: Keras' mnist_cnn (conv32-conv64-maxpool-dense128, dropout off so the
loops can match) on those digits tiled to --cnn_steps full batches, so every k is timed
over the same fixed number of steps. Plain SGD with Keras inverse-time decay, one device.
The loops (sgdlab.studies.baselines): sgdlab's Run as the loop drives it; the
hand-written JAX patterns, one jitted scan per epoch and Flax's examples' jit per step;
PyTorch (MLP only, if `import torch` works; 2 threads, no DataLoader).

All loops start from sgdlab's initial parameters and see the same batch order, so after
the warm-up epoch they hold the same parameters: the script prints the largest
difference, which shows the comparison is like for like. Compilation and the warm-up
epoch are not timed. The loops are alternated one epoch at a time so that load from
other processes falls on all of them: a round times one epoch of each loop back to
back, the JAX loops in rotating order; PyTorch goes last, then a short untimed pause.
A loop slower than --prune x the best in the first round is timed in that round only
(plain XLA's CNN scan at k=256 takes 16 s per step); hand_scan_max_k leaves it out
above a k (at k=2048 it did not finish its 2-step warm-up epoch in 16 minutes).

The table gives the median examples/s over timed epochs with their spread (min-max),
and the median and interquartile range of the per-round ratio of sgdlab to the best
hand-written JAX pattern (the faster median), of wall time and of this process's CPU
time (steadier when other processes share the cores). About 4 minutes on 2 CPU cores
per model. --config=experiments/benchmark_throughput.py:small: one k on 512 examples of
a small MLP, every loop but PyTorch, in seconds (what the tests run). The engine is
sgdlab.studies.throughput.
"""

from __future__ import annotations

import os

import ml_collections

from sgdlab import cli
from sgdlab.studies import throughput


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The benchmark's settings; variant "small" for the tests."""
  c = ml_collections.ConfigDict(dict(
      model="mlp",  # or "cnn"
      hidden=(512, 512),  # the MLP's widths
      n_train=0,  # training examples per epoch: 0 = the 4,000 bundled digits
      epochs=3,  # timed epochs per loop and k in each repeat
      repeats=5,  # passes over all batch sizes
      batch_sizes=(32, 256, 2048),
      cnn_steps=4,  # CNN: steps per timed epoch (the digits tiled)
      prune=3.0,  # time a loop this much slower than the best once only
      hand_scan_max_k=0,  # build the hand-written scan loop only up to this k (0: all)
      learning_rate=0.1,  # SGD; stays finite at k=32
      lr_decay=1e-3,  # inverse-time decay per step
      torch=True,  # include the PyTorch loop if torch imports
      torch_threads=2,
  ))
  if variant == "small":
    c.hidden, c.n_train, c.batch_sizes = (32,), 512, (128,)
    c.epochs, c.repeats, c.torch = 1, 2, False
  return c


def main(argv: list[str]) -> None:
  del argv
  throughput.measure(cli.config())


if __name__ == "__main__":
  cli.define_config_flags(os.path.abspath(__file__))
  cli.main(main)
