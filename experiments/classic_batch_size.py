r"""The classic batch-size runs: SGD with Keras inverse-time decay on MNIST.

  python -m sgdlab.launch --config=experiments/classic_batch_size.py --workdir=runs/classic

MLP 784-512-512-10 on the 5,000 bundled real MNIST digits (4,000 train / 1,000 test),
lr_t = lr / (1 + 1e-3 t), 10 epochs. Five runs: lr=1 at k=2048, 256 and 32, then k=32
at lr=0.1 and 0.01. It shows how the number of steps per epoch (2 at k=2048, 125 at
k=32) decides how far a fixed epoch budget gets, whether lr=1 is too large at small k
(non-monotone loss) and whether a smaller lr needs more epochs. About a minute on 2
CPU cores. The table is in the README; summary.md and overlay.png land in the workdir.

For full MNIST: --config.data.dir=/path/to/idx/files (train-images-idx3-ubyte.gz, ...).
"""

from sgdlab.config import default_config


def get_config():
  config = default_config()
  config.model.name = "mlp"
  config.model.hidden = (512, 512)
  config.learning_rate = 1.0
  config.lr_decay = 1e-3
  config.num_epochs = 10
  config.schedule.name = "inverse_time"
  config.sweep.points = (
      {"batch_size": 2048},
      {"batch_size": 256},
      {"batch_size": 32},
      {"batch_size": 32, "learning_rate": 0.1},
      {"batch_size": 32, "learning_rate": 0.01},
  )
  return config
