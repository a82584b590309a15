r"""Don't decay the lr, increase the batch size: three schedules with the same noise drop.

  python -m sgdlab.launch --config=experiments/increase_batch_size.py --workdir=runs/ramp

Smith, Kindermans, Ying & Le (2018) argued that SGD's noise scale is about lr * n / k, so
dividing the lr by 5 and multiplying k by 5 should give the same test curve against
epochs, the second with fewer updates. Three arms, 5 seeds each (each arm's seeds train
as one population), the MLP 784-512-512-10 on the 4,000 bundled MNIST digits, plain SGD
(no momentum, no decay), lr 0.1, k=32, 30 epochs, the change at epochs 10 and 20:
  "decay lr":   k=32 throughout, lr / 5 at epoch 10 and again at 20 (3,750 updates)
  "increase k": lr 0.1 throughout, k = 32, 160, 800 (1,250 + 250 + 50 = 1,550 updates)
  "hybrid":     k x 5 at epoch 10, lr / 5 at epoch 20 (1,250 + 500 = 1,750 updates)
Writes summary.md (each arm's final figures as median [IQR] over seeds) and
schedules.png (test accuracy against epochs and against updates). About 3 minutes on 2
CPU cores. docs/batch_size_schedule.md states what it found.

  --config=experiments/increase_batch_size.py:resnet   the ResNet-8 (batch norm, width
      16) on the digits at 14x14, same arms (about an hour)
  --config=experiments/increase_batch_size.py:small   tiny synthetic data, 6 epochs,
      2 seeds (seconds; what the tests run)
"""

import math

from sgdlab import data
from sgdlab.config import default_config

FACTOR = 5


def arms(k: int, n_train: int, first: int, second: int, drop: bool) -> tuple[dict, ...]:
  """The three arms' overrides: the lr divided by FACTOR at the two epochs (boundaries in
  updates), k multiplied by it, or k first and the lr second."""
  def steps(batch: int) -> int:
    return n_train // batch if drop else math.ceil(n_train / batch)

  step_lr = {"schedule.name": "step", "schedule.factor": 1.0 / FACTOR}
  ramp = {"batch_size_schedule.boundaries": (first, second),
          "batch_size_schedule.sizes": (k * FACTOR, k * FACTOR ** 2)}
  hybrid_switch = first * steps(k) + (second - first) * steps(k * FACTOR)
  return (
      {"name": "decay lr", **step_lr,
       "schedule.boundaries": (first * steps(k), second * steps(k))},
      {"name": "increase k", "schedule.name": "constant", **ramp},
      {"name": "hybrid", **step_lr, "schedule.boundaries": (hybrid_switch,),
       "batch_size_schedule.boundaries": (first,),
       "batch_size_schedule.sizes": (k * FACTOR,)},
  )


def get_config(variant: str = ""):
  config = default_config()
  config.model.dropout = 0.0
  config.optimizer.name, config.lr_decay, config.learning_rate = "sgd", 0.0, 0.1
  config.batch_size, config.num_epochs, first, second = 32, 30, 10, 20
  seeds = (0, 1, 2, 3, 4)
  if variant == "resnet":
    config.model.name, config.model.resnet_depth, config.model.resnet_width = "resnet", 8, 16
    config.data.image_size, config.drop_remainder = 14, True
  if variant == "small":
    config.data.name = "synthetic"
    config.data.synthetic_n_train, config.data.synthetic_n_test = 256, 64
    config.data.synthetic_input_shape = (6, 6, 1)
    config.model.hidden, config.batch_size, config.num_epochs = (16,), 8, 6
    first, second, seeds = 2, 4, (0, 1)
  n_train = data.describe(config.data).n_train
  config.sweep.points = arms(config.batch_size, n_train, first, second,
                             config.drop_remainder)
  config.sweep.product.seed = seeds
  config.population = True
  return config
