r"""The classic grid: batch size k x learning rate, SGD with Keras inverse-time decay, MNIST.

  python -m sgdlab.launch --config=experiments/classic_grid.py --workdir=runs/classic_grid
  python -m sgdlab.report --workdir=runs/classic_grid   # rebuild the summary at any time

MLP 784-512-512-10 on the 5,000 bundled real MNIST digits (4,000 train / 1,000 test),
k in (2048, 256, 32) x lr in (1, 0.1, 0.01), lr_t = lr / (1 + 1e-3 t), 10 epochs: nine
points, about 1.5 minutes on 2 CPU cores. sweep.png in the workdir (docs/classic_grid.png)
shows (a) final test accuracy vs k for each lr, (b) the best lr for each k, and (c) the
training loss per epoch for each k. With a fixed budget of epochs, k sets the number of
steps (2 per epoch at k=2048, 125 at k=32). Measured (seed 0): test accuracy falls with
k at every lr; the best lr is 1 at k=32 (0.956) and k=256 (0.949) but 0.1 at k=2048
(0.789), where lr=1 makes the loss jump up and down (it rose in epochs 3 and 6) and
lr=0.01 barely moves it in 20 steps.

Each point checkpoints every 2 epochs; run the same command again after an
interruption and it skips finished points and resumes the others. Workers:
--num_workers=3 --worker_index=0..2 (or a SLURM array of 3 tasks) share the grid.
  --config=experiments/classic_grid.py:small   tiny synthetic data, seconds (the tests)
  --config.data.dir=/path/to/idx/files         full MNIST
"""

from sgdlab.config import default_config


def get_config(variant: str = ""):
  config = default_config()
  config.model.name = "mlp"
  config.model.kernel_init = "glorot_uniform"  # Keras Dense default, as the classic runs used
  config.model.hidden = (512, 512)
  config.lr_decay = 1e-3
  config.num_epochs = 10
  config.schedule.name = "inverse_time"
  config.checkpoint_every_epochs = 2
  config.sweep.product.batch_size = (2048, 256, 32)
  config.sweep.product.learning_rate = (1.0, 0.1, 0.01)
  if variant == "small":
    config.data.name = "synthetic"
    config.data.synthetic_n_train, config.data.synthetic_n_test = 256, 64
    config.data.synthetic_input_shape = (6, 6, 1)
    config.model.hidden = (16,)
    config.num_epochs = 2
    config.checkpoint_every_epochs = 1
    config.sweep.product.batch_size = (128, 16)
    config.sweep.product.learning_rate = (1.0, 0.1)
  return config
