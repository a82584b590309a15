r"""What a Hessian-vector product costs against one gradient, for the MLP and the CNN.

  python experiments/benchmark_hvp.py [--config.k=256] [--config.rounds=5]

One batch of k=256 synthetic MNIST-shaped images, sgdlab's MLP 784-512-512-10 and
Keras' mnist_cnn, one device: the gradient, one Hessian-vector product (forward over
reverse, sgdlab.curvature.hvp) and one Lanczos run of 5 products, each jitted and
timed in turn, order rotated every round. An HVP is expected to cost 2-3 gradients;
on CPU the CNN's convolutions take their forward-differentiable form
(conv_impl="im2col_jvp", docs/curvature.md). About 1.5 minutes on 2 CPU cores. The
engine is sgdlab.studies.hvp_cost.

  --config=experiments/benchmark_hvp.py:small   k=16, the MLP, 2 rounds (seconds; what
      the tests run)
"""

from __future__ import annotations

import os

import ml_collections

from sgdlab import cli
from sgdlab.studies import hvp_cost


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The benchmark's settings; variant "small" for the tests."""
  c = ml_collections.ConfigDict(dict(
      k=256,  # examples in the batch
      rounds=5,  # rounds over gradient, HVP and Lanczos
      iterations=5,  # Lanczos iterations (HVPs) per run
      models=("mlp", "cnn"),
  ))
  if variant == "small":
    c.k, c.rounds, c.iterations, c.models = 16, 2, 3, ("mlp",)
  return c


def main(argv: list[str]) -> None:
  del argv
  hvp_cost.measure(cli.config())


if __name__ == "__main__":
  cli.define_config_flags(os.path.abspath(__file__))
  cli.main(main)
