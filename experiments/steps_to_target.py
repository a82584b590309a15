r"""Steps to a target versus batch size k, with the gradient noise scale beside it.

  python experiments/steps_to_target.py --workdir=runs/steps_to_target

For k = 1, 2, 4, ... and the whole training set, SGD with a constant lr trains the MLP
784-512-512-10 on the 4,000 bundled MNIST training digits until the test accuracy
first reaches 0.9 (checked after steps 1..20, then every ~5% more steps). The lr is
tuned per k on a grid of factor sqrt(2): starting from the best lr of the previous k,
the grid grows up or down until the best lr has a worse (or diverging) neighbour on
both sides; a run stops as soon as it needs more steps than the best so far at its k.
Each step sees k fresh examples (full batches only, a new permutation per epoch).

It shows the regimes of Shallue et al. (2018), perfect scaling (doubling k halves the
steps), diminishing returns and no gain at all, as this data and model give them, and
fits McCandlish et al.'s S = S_min (1 + B_noise / k) to the measured points. Next to
the fitted B_noise it measures the simple noise scale B_simple = tr(Sigma) / |G|^2:
online during an ordinary training run at k = 256 (config.noise_scale=True with
noise_groups=16: small batches of 16; the tuned lr, 4x its steps to target), with the
trainer's probe at each epoch's end (config.noise_probe_batches=15: 15 extra batches at
that epoch's parameters), and at checkpoints of that run both exactly
(per-example gradients over all 4,000 digits) and by the online estimator averaged
over 400 batches at the checkpoint's parameters.

Writes to the workdir: results.json (every run), table.md, steps_to_target.png,
noise_scale.png (the noise run: sgdlab.studies.noise_run). Deterministic: a
rerun on the same machine and versions gives the same table. Measured on 2 AMD EPYC
cores: about 8 minutes wall (the noise run, with its probe, 2 of them). Larger settings:
  --config.data.dir=/path/to/idx  full MNIST (60k): raise steps_to_target.max_examples
  --config.steps_to_target.target=0.95, or .metric=train_loss --config.steps_to_target.target=0.1
  --config.steps_to_target.batch_sizes="(8, 64, 512)"  a subset of k only
  --config.optimizer.name=momentum, --config.schedule.name=cosine (decay length from
    num_epochs), --config.model.hidden="(128,)" work as in sgdlab.launch configs.
  --config=experiments/steps_to_target.py:small   tiny synthetic data, three k, a low
    target: every code path in seconds (what the tests run)

Past the device's memory: --config=experiments/steps_to_target.py:cnn is Keras' CNN
(dropout off) at k = 64, 512, 4000 under memory_budget=1GiB, where one step at k=4000
needs 5.6 GiB: microbatch_size="auto" keeps every k and accumulates where it must
(the table's micro-batch column). With --config.memory_budget= --config.microbatch_size=0
the same runs go without accumulation (a machine with the memory): the steps to target
agree within float summation noise. About 13 CPU-minutes each (25 minutes wall when
the two ran side by side on 2 cores); no noise run. The engine is
sgdlab.studies.steps_to_target.
"""

from __future__ import annotations

import os

import ml_collections

from sgdlab import cli
from sgdlab.studies import steps_config, steps_to_target


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The defaults the module docstring describes; variants "cnn" and "small"."""
  c = steps_config.base_config()
  c.model.name, c.model.hidden, c.model.dropout = "mlp", (512, 512), 0.0
  s = c.steps_to_target
  if variant == "cnn":
    c.model.name, c.model.conv_dropout, c.model.dense_dropout = "cnn", 0.0, 0.0
    c.memory_budget, c.microbatch_size = "1GiB", "auto"
    c.eval_batch_size = 100  # evaluation is not planned: keep it small
    c.learning_rate = 0.05
    s.batch_sizes, s.max_lrs, s.noise_batch_size = (64, 512, 4000), 4, 0
  if variant == "small":
    c.data.name = "synthetic"
    c.data.synthetic_n_train, c.data.synthetic_n_test = 256, 128
    c.data.synthetic_input_shape = (6, 6, 1)
    c.model.hidden = (32,)
    c.learning_rate = 0.1
    s.batch_sizes, s.target, s.max_lrs, s.max_steps = (16, 64), 0.3, 2, 300
    s.noise_batch_size, s.noise_fixed_batches, s.noise_checkpoints = 32, 5, 2
    s.noise_probe_batches = 4
    c.noise_groups = 4  # still more than two halves, at a fraction of 16's cost
    s.noise_length = 2.0
  return c


def main(argv: list[str]) -> None:
  del argv
  config = cli.config()
  cli.call(lambda: steps_to_target.validate(config))  # before anything is written
  steps_to_target.study(config, cli.workdir())


if __name__ == "__main__":
  # Flags only when run: config_flags imports this file again to call get_config.
  cli.define_config_flags(os.path.abspath(__file__))
  cli.main(main)
