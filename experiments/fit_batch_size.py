r"""How large a batch fits: the Keras MNIST CNN, by compiling its train step per k.

  python -m sgdlab.fit --config=experiments/fit_batch_size.py --memory_budget=8GiB \
      --image_sizes=28,112 --workdir=runs/fit

For a device with 8 GiB, the largest power-of-two k and the exact largest k at 28x28
and at 112x112 inputs (bundled MNIST resized), without running a step: about a dozen
compiled programs per size. The table shows where the bytes go (parameters, optimizer
state, batch, activations, the dataset held on every device) and which layer costs
most per example; on CPU (k=2048 and k=64 at 8 GiB) the conv patch buffers are half
of it, --target=accelerator counts XLA's buffers alone (k=2048 and k=128). About 30 s
on 2 CPU cores; fit.json and fit.png (bytes vs k with the budget line) land in the
workdir. Add --method=trial to find the answer the manual way (a few real steps of
the trainer's programs in a child process per k; on CPU under an address-space limit).

For a fixed k whose step does not fit, the plans instead (micro-batch, remat, dtype;
about a minute on 2 CPU cores for 14 plans):
  python -m sgdlab.fit --config=experiments/fit_batch_size.py --memory_budget=1GiB \
      --config.batch_size=4000 --config.microbatch_size=auto --workdir=runs/plan

The same config trains with the batch size found: batch_size = "auto".
  python -m sgdlab.launch --config=experiments/fit_batch_size.py --config.memory_budget=2GiB
--config=experiments/fit_batch_size.py:small is a small CNN on 16x16 synthetic images
(seconds; what the tests run).
"""

from sgdlab.config import default_config


def get_config(variant: str = ""):
  config = default_config()
  config.model.name = "cnn"  # conv 32, conv 64, max-pool, dropout, dense 128, dropout
  config.batch_size = "auto"  # the largest k whose compiled step fits memory_budget
  config.memory_budget = ""  # "" = this device's free memory; or e.g. "8GiB"
  config.memory_headroom = 0.1
  # On CPU a 112x112 eval batch of 1000 needs 13 GiB of conv patch buffers: keep it small.
  config.eval_batch_size = 100
  config.learning_rate = 0.1
  config.lr_decay = 0.0
  config.schedule.name = "constant"
  config.num_epochs = 1
  if variant == "small":
    config.data.name = "synthetic"
    config.data.synthetic_n_train, config.data.synthetic_n_test = 512, 64
    config.data.synthetic_input_shape = (16, 16, 1)
    config.model.features, config.model.dense = (4, 8), 16
  return config
