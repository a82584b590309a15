r"""A convolution's three parts on this machine: XLA's against sgdlab's (models/conv.py).

  python experiments/benchmark_conv.py [--config.batch=128] [--config.rounds=5]

The Keras MNIST CNN's second convolution (k x 26x26x32 -> 64 channels, 3x3, VALID),
timed as a top-level jitted program and as the body of a `lax.scan` over distinct
batches (the form sgdlab's epoch compiles: no loop-invariant work to hoist), for the
forward pass, the input gradient and the kernel gradient, each in XLA's form and in
sgdlab's (input gradient as a forward convolution over batch chunks, kernel gradient
as chunked im2col matmuls). Against the machine's matmul rate (a 2048^2 fp32 matmul). Medians over
`rounds`, alternating the forms. About a minute on 2 CPU cores; XLA's kernel gradient
inside a scan is the slow cell (seconds per call). --config=experiments/benchmark_conv.py:small:
8 images, one round (seconds; what the tests run). The engine is sgdlab.studies.conv_parts.
"""

from __future__ import annotations

import os

import ml_collections

from sgdlab import cli
from sgdlab.studies import conv_parts


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The benchmark's settings; variant "small" for the tests."""
  c = ml_collections.ConfigDict(dict(
      batch=128,  # images per call
      rounds=5,  # timed calls per cell (medians)
      scan_length=2,  # iterations of the scanned form per call
  ))
  if variant == "small":
    c.batch, c.rounds = 8, 1
  return c


def main(argv: list[str]) -> None:
  del argv
  conv_parts.measure(cli.config())


if __name__ == "__main__":
  cli.define_config_flags(os.path.abspath(__file__))
  cli.main(main)
