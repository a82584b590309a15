r"""Steps to a target against k for momentum, Nesterov, Adam, LARS and LAMB, each tuned alike.

  python experiments/optimizers_across_k.py --workdir=runs/optimizers_across_k

Nado et al. (2021, "A Large Batch Optimizer Reality Check") found that Nesterov momentum
and Adam, tuned as well as LARS and LAMB, match them at large k; Zhang et al. (2019,
"Which Algorithmic Choices Matter at Which Batch Sizes?") that preconditioning (Adam)
moves the critical batch size up. This asks both on sgdlab's MLP 784-512-512-10 with the
4,000 bundled MNIST digits: per optimizer and k (16, 64, 256, 1024), two independent
studies of 8 quasi-random trials (scrambled Halton) over the lr (log scale) and the
optimizer's momentum or b1 (reverse log, crowding toward 1), constant lr, no weight
decay; each trial trains until the test accuracy first reaches 0.9 (checked on a
growing schedule), its budget, or divergence (then infeasible). The score of a cell is
the median over the studies of each study's best steps (Shallue et al. 2018; AlgoPerf's
robust scoring); S(k) = S_min (1 + B_noise / k) is fitted per optimizer.

Writes results.json (every trial), table.md, steps_by_optimizer.png (steps against k with
the fits, and B_noise per optimizer) and trial_budget.png (best so far against trials
spent). The engine is sgdlab.studies.trial_budget; docs/optimizers.md states what it
found. 29 min on 2 CPU cores (320 trials, most cut short once they cannot beat their
study's best). Each finished (optimizer, k) cell is kept in workdir/cells: a rerun resumes.

  --config=experiments/optimizers_across_k.py:resnet   the ResNet-8 (batch norm, width 16)
      on the same digits at 14x14, target 0.9, k = 64, 256, 1024, two studies of 6
      trials (CIFAR-10: --config.data.name=cifar10 --config.data.dir=...
      --config.steps_to_target.target=0.6): 102 min on 2 CPU cores, other work beside
  --config.trial_budget.trials=16 --config.trial_budget.studies=3   a larger budget
  --config=experiments/optimizers_across_k.py:small   tiny synthetic data, two k, two
      optimizers, two trials per study of the lr alone: in a minute (what the tests run)
"""

from __future__ import annotations

import os

import ml_collections

from sgdlab import cli
from sgdlab.studies import steps_config, trial_budget

_MOMENTUM = dict(min=0.5, max=0.995, scale="reverse_log")


def spaces() -> ml_collections.ConfigDict:
  """Per optimizer: the lr on a log scale over the range where it trains at all, and
  its momentum (or Adam's b1) on a reverse log scale."""
  return ml_collections.ConfigDict(dict(
      momentum=dict(learning_rate=dict(min=1e-3, max=3.0, scale="log"),
                    optimizer=dict(momentum=_MOMENTUM)),
      nesterov=dict(learning_rate=dict(min=1e-3, max=3.0, scale="log"),
                    optimizer=dict(momentum=_MOMENTUM)),
      adam=dict(learning_rate=dict(min=1e-5, max=3e-2, scale="log"),
                optimizer=dict(b1=_MOMENTUM)),
      # LARS scales each layer's step by trust_coefficient * |w| / |g|: lr near 1 to 100.
      lars=dict(learning_rate=dict(min=0.1, max=300.0, scale="log"),
                optimizer=dict(momentum=_MOMENTUM)),
      lamb=dict(learning_rate=dict(min=1e-4, max=0.3, scale="log"),
                optimizer=dict(b1=_MOMENTUM)),
  ))


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The defaults the module docstring describes; variants "resnet" and "small"."""
  c = steps_config.base_config()
  c.model.name, c.model.hidden, c.model.dropout = "mlp", (512, 512), 0.0
  s = c.steps_to_target
  s.batch_sizes, s.target, s.noise_batch_size = (16, 64, 256, 1024), 0.9, 0
  s.max_steps, s.max_examples = 3000, 400_000
  c.trial_budget = trial_budget.section()
  c.trial_budget.spaces = spaces()
  if variant == "resnet":  # as experiments/resnet_cifar_steps_to_target.py:mnist
    c.model.name, c.model.resnet_depth, c.model.resnet_width = "resnet", 8, 16
    c.data.name, c.data.image_size = "mnist", 14
    c.drop_remainder = True  # batch norm: statistics of whole batches only
    # k=16 left out: a study's first trial may run all its budget (momentum: 92, 58, 43).
    s.batch_sizes, c.trial_budget.trials = (64, 256, 1024), 6
    s.max_steps, s.max_examples = 250, 80_000
  if variant == "small":
    c.data.name, c.data.synthetic_n_train, c.data.synthetic_n_test = "synthetic", 256, 128
    c.data.synthetic_input_shape = (6, 6, 1)
    c.model.hidden = (32,)
    s.batch_sizes, s.target, s.max_steps = (16, 64), 0.3, 200
    c.trial_budget.optimizers = ("momentum", "lamb")
    c.trial_budget.trials, c.trial_budget.studies = 2, 2  # the lr alone: one Run per k
    c.trial_budget.spaces = {n: dict(learning_rate=c.trial_budget.spaces[n].learning_rate) for n in
                             c.trial_budget.optimizers}
  return c


def main(argv: list[str]) -> None:
  del argv
  config = cli.config()
  cli.call(lambda: trial_budget.validate(config))  # before anything is written
  trial_budget.study(config, cli.workdir())


if __name__ == "__main__":
  # Flags only when run: config_flags imports this file again to call get_config.
  cli.define_config_flags(os.path.abspath(__file__))
  cli.main(main)
