"""B_simple during one training run of the steps-to-target experiment, against exact.

The online estimate in training (config.noise_scale=True; its EMA per step, its
windowed trend, its per-epoch mean, and the trainer's probe at each epoch's end,
config.noise_probe_batches), and at checkpoints of the same run both exactly
(per-example gradients over the whole training set, `sgdlab.noise.exact`) and by the
online estimator averaged over many batches at the checkpoint's parameters
(`sgdlab.studies.noise_run`; experiments/steps_to_target.py runs it once after its
sweep). This config repeats the noise run over seeds, noise_groups and probe sizes and
prints how far each in-training estimate is from exact at each checkpoint:

  python experiments/noise_checkpoints.py --config.compare.seeds="(0, 1, 2)" \
      --config.compare.noise_groups="(16,)" --config.compare.probe_batches="(4, 15)"

(those are the defaults; the MLP/MNIST run at k=256, lr 0.905 (the tuned lr), 176
steps; about 90 s a run on 2 CPU cores, ~10 minutes in all).
--config=experiments/noise_checkpoints.py:small is the same on tiny synthetic data in
seconds (what the tests run). The checkpoints are epoch ends, where the probe runs, so the probe is
compared at the very parameters exact B_simple is computed at.

Beside the EMA it reports `noise.windowed_curve`: exponential trends of |G|^2 and
tr(Sigma) over the last 3 per-step estimates, read at the checkpoint (causal: what the
trainer knows once it has the checkpoint's own batch), and a post-hoc two-sided
version (2 estimates either side). Exact B_simple at 62 single steps of this run
(k=256, lr 0.905, seeds 0 and 1) is why the windows are this short: B_simple jumps
2-5x from one step to the next (seed 0: 26, 11, 9.6 at steps 15-17; 287, 165, 558 at
79-81), and one batch's estimate is within 20% of exact at its own parameters only
43% of the time, so a longer window averages real changes, not noise. Median
|log(estimate / exact)| over those steps: EMA 0.78, causal window 0.29, two-sided 0.30.
Those figures were measured with two halves (noise_groups=0). A miss early in
training is the checkpoint's own batch: its tr(Sigma) estimate, a sample variance over
one degree of freedom with halves. With noise_groups=16 (15 degrees of freedom, what
steps_to_target.py uses) the causal window was within 20% at steps 16 and 32 at 5 of
6 checkpoints of seeds 0-2 (halves: 2 of 6); at steps 80 and 176, where B_simple is
above k and one batch's |G|^2 estimate is mostly noise, at 1 of 6 (halves 0 of 6).
The probe, 15 batches at the epoch's end (what steps_to_target.py runs), was within
10% at steps 16, 32 and 80 for all three seeds, and at step 176 (B_simple up to 1,146,
a quarter of the 4,000 digits) within 23%. README, "Gradient noise scale and steps to
a target", has the table.
"""

from __future__ import annotations

import os

import jax
import ml_collections

from sgdlab import cli
from sgdlab.studies import noise_run, steps_config
from sgdlab.train import step


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """steps_to_target.py's MLP/MNIST config and the runs to compare (`compare`)."""
  c = steps_config.base_config()
  c.model.name, c.model.hidden, c.model.dropout = "mlp", (512, 512), 0.0
  c.steps_to_target.noise_fixed_batches = 4  # exact is the reference here
  c.compare = ml_collections.ConfigDict(dict(
      seeds=(0, 1, 2), noise_groups=(16,), probe_batches=(4, 15),
      batch_size=256,  # k of the noise run
      learning_rate=0.01 * 2 ** 6.5,  # its constant lr (the tuned one)
      steps=176,  # steps to run (4x the steps to target)
  ))
  if variant == "small":
    c.data.name = "synthetic"
    c.data.synthetic_n_train, c.data.synthetic_n_test = 256, 128
    c.data.synthetic_input_shape = (6, 6, 1)
    c.model.hidden = (32,)
    c.steps_to_target.noise_checkpoints = 2
    c.compare.update(dict(seeds=(0,), noise_groups=(4,), probe_batches=(2,), batch_size=32,
                          learning_rate=0.1, steps=16))
  return c


def main(argv: list[str]) -> None:
  del argv
  config = cli.config()
  noise_run.compare(config, mesh=step.make_mesh(jax.devices()[:1]), **config.compare)


if __name__ == "__main__":
  cli.define_config_flags(os.path.abspath(__file__))
  cli.main(main)
