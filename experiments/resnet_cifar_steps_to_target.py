r"""Steps to a target validation error versus k for ResNet-8 with batch norm, Shallue et
al. (2018)'s CIFAR-10 setting, with McCandlish et al.'s fit and B_simple beside it.

  python experiments/resnet_cifar_steps_to_target.py --workdir=runs/resnet_cifar \
      --config.data.dir=/path/to/cifar-10-batches-py

For your CIFAR-10 files (the "python version" batches; sgdlab downloads nothing, so this
variant does not run without them). ResNet-8 (width 16, batch norm per device, zero-init
last scale per block), Nesterov momentum 0.9 at a constant lr tuned per k on a sqrt(2)
grid (extended while the best lr sits on its edge), weight decay 5e-4, crop-and-flip
augmentation, 10% of the training set held out: the lr is tuned on validation
accuracy >= 0.6 and the test accuracy at that step is reported, the mean over seeds 0
and 1. Expect hours on a GPU, days on CPU cores.

  python experiments/resnet_cifar_steps_to_target.py --workdir=runs/resnet_mnist \
      --config=experiments/resnet_cifar_steps_to_target.py:mnist

The same experiment on the bundled 4,000 MNIST digits, runnable anywhere: ResNet-8 at
14x14 (data.image_size), target validation accuracy 0.9, k = 16, 64, 256, 1024: 15 min
on 2 CPU cores; the README's table. The small variant (--config=...:small, about 80 s on
2 CPU cores) is what the tests run.

What it shows: where this model's regimes of perfect scaling and diminishing returns
lie, and whether B_simple (measured in an ordinary run at k = 256 with the tuned lr, by
the trainer's probe of 8 batches at each epoch's end) predicts the fitted B_noise of
S = S_min (1 + B_noise / k): both are in steps_to_target.png. Exact per-example
B_simple does not apply to batch norm (an example's gradient depends on its batch), so
this experiment has no exact checkpoints.
On one device the noise run's step splits the batch in two, and batch norm then
normalizes over each half (k / 2), as on two devices.

Writes results.json, table.md, steps_to_target.png, noise_scale.png to the workdir
(sgdlab.studies.steps_to_target does the work).
"""

from __future__ import annotations

import os

import ml_collections

from sgdlab import cli
from sgdlab.studies import steps_config, steps_to_target


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """variant "": CIFAR-10 from data.dir; "mnist": the bundled digits; "small": seconds."""
  c = steps_config.base_config()
  c.model.name, c.model.resnet_depth, c.model.resnet_width = "resnet", 8, 16
  c.optimizer.name, c.optimizer.momentum, c.optimizer.weight_decay = "nesterov", 0.9, 5e-4
  c.data.name, c.data.validation_fraction = "cifar10", 0.1
  c.drop_remainder = True  # batch norm: statistics of whole batches only
  c.learning_rate = 0.05
  s = c.steps_to_target
  s.metric, s.target, s.seeds = "validation_accuracy", 0.6, (0, 1)
  s.batch_sizes = (32, 64, 128, 256, 512, 1024, 2048)
  s.max_lrs, s.max_steps, s.max_examples = 8, 100_000, 20_000_000
  s.noise_checkpoints = 0  # batch norm: no per-example gradients
  # Two halves: batch norm normalizes each small batch on its own, so 16 groups would
  # measure a model with 16x smaller batch statistics.
  c.noise_groups = 0
  # The trustworthy in-training B_simple here (no exact one): 8 extra batches at each
  # epoch's end, batch statistics per batch as in training.
  s.noise_probe_batches = 8
  if variant == "mnist":
    c.data.name, c.data.image_size = "mnist", 14
    s.target, s.batch_sizes, s.max_lrs = 0.9, (16, 64, 256, 1024), 5
    s.max_examples = 1_000_000
  if variant == "small":
    c.data.name, c.data.synthetic_num_classes = "synthetic", 2
    c.data.synthetic_n_train, c.data.synthetic_n_test = 320, 64
    c.data.synthetic_input_shape = (6, 6, 1)
    c.model.resnet_width = 2
    c.learning_rate = 0.1
    s.target, s.batch_sizes, s.max_lrs, s.max_steps = 0.55, (16, 32), 2, 40
    s.noise_batch_size, s.noise_length, s.noise_probe_batches = 16, 0.5, 4
  return c


def main(argv: list[str]) -> None:
  del argv
  config = cli.config()
  cli.call(lambda: steps_to_target.validate(config))  # before anything is written
  steps_to_target.study(config, cli.workdir())


if __name__ == "__main__":
  cli.define_config_flags(os.path.abspath(__file__))
  cli.main(main)
