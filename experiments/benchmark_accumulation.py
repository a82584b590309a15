r"""What gradient accumulation costs, and whether the fixed-k planner picks the fastest plan.

  python experiments/benchmark_accumulation.py [--config.repeats=3]
  python experiments/benchmark_accumulation.py --config.part=plans --config.model=cnn \
      --config.k=4000 --config.memory_budget=1GiB

Part "fits" (a k whose step fits): examples/s of the trainer's Run over whole epochs
with one step per update against micro-batch k/4 (4 accumulation steps), for the MLP
(784-512-512-10) and Keras' mnist_cnn on the bundled MNIST digits (4,000), dropout off.
Part "plans" (a k whose step does not fit memory_budget): the planner's report, then
every plan it compiled that fits is run for real, whole epochs after a warm-up epoch,
so its predicted seconds per update stand beside the measured ones. One device; the
trainer's own Run is what is timed (sgdlab.studies.bench), median of `repeats` epochs. Both parts run by default. Cost on a 2-core CPU: part fits ~2 minutes, part
plans at the CNN's k=4000 ~4 minutes (micro-batch 1 runs 4,000 micro-steps per update).
--config=experiments/benchmark_accumulation.py:small: part fits for a small MLP at k=256
(seconds; what the tests run). The engine is sgdlab.studies.accumulation.
"""

from __future__ import annotations

import os

import ml_collections

from sgdlab import cli
from sgdlab.studies import accumulation


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The benchmark's settings; variant "small" for the tests."""
  c = ml_collections.ConfigDict(dict(
      part="all",  # all, fits or plans
      repeats=5,  # timed epochs per configuration (median)
      hidden=(512, 512),  # the MLP's widths
      fits=(("mlp", 256), ("mlp", 2048), ("cnn", 256)),  # part fits: (model, k)
      model="cnn",  # part plans: the model
      k=4000,  # part plans: the fixed batch size
      memory_budget="1GiB",  # part plans: per-device budget
  ))
  if variant == "small":
    c.part, c.repeats, c.hidden, c.fits = "fits", 1, (32,), (("mlp", 256),)
  return c


def main(argv: list[str]) -> None:
  del argv
  accumulation.measure(cli.config())


if __name__ == "__main__":
  cli.define_config_flags(os.path.abspath(__file__))
  cli.main(main)
