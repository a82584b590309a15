r"""The classic batch-size runs: SGD with Keras inverse-time decay on MNIST, ten seeds.

  python -m sgdlab.launch --config=experiments/classic_batch_size.py --workdir=runs/classic

MLP 784-512-512-10 on the 5,000 bundled real MNIST digits (4,000 train / 1,000 test),
lr_t = lr / (1 + 1e-3 t), 10 epochs. Five runs, each with seeds 0-9: lr=1 at k=2048,
256 and 32, then k=32 at lr=0.1 and 0.01; the seeds (and lrs) of one k train as one
population, one program whose members are the runs. It shows how the number of steps
per epoch (2 at k=2048, 125 at k=32) decides how far a fixed epoch budget gets,
whether lr=1 is too large at small k (non-monotone loss) and whether a smaller lr
needs more epochs. Over seeds, divergence and a loss that rose are rates: the summary
gives each with its 95% Wilson interval, and the median and interquartile range of the
final figures over the seeds that did not diverge. About 3 minutes on 2 CPU cores;
summary.md and overlay.png land in the workdir.

  --config=experiments/classic_batch_size.py:sharpness   the same runs, and after the last
      epoch the top Hessian eigenvalue (Lanczos, 20 products) and Keskar et al.'s
      epsilon-sharpness (eps 1e-3) of the training loss on 2,048 fixed training examples
      (2048 / k batches): does large k end sharper, as Keskar et al. (2017) claim? About
      5 minutes; docs/curvature.md
  --config=experiments/classic_batch_size.py:small   the same sweep on tiny synthetic
      data in seconds (what the tests run)
  --config.sweep.product.seed="(0,)"                   one seed
  --config.population=False                            each run alone (same figures)
  --config.data.dir=/path/to/idx/files                 full MNIST (train-images-idx3-ubyte.gz, ...)
"""

from sgdlab.config import default_config


def get_config(variant: str = ""):
  config = default_config()
  config.model.name = "mlp"
  config.model.kernel_init = "glorot_uniform"  # Keras Dense default, as the classic runs used
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
  config.sweep.product.seed = tuple(range(10))
  config.population = True
  if variant == "sharpness":
    sharpness(config, examples=2048)
  if variant == "small":
    small(config)
  return config


def sharpness(config, examples):
  """Sharpness after the last epoch on `examples` training examples at every k."""
  config.sweep.points = tuple(dict(p, sharpness_batches=examples // p["batch_size"])
                              for p in config.sweep.points)
  config.sharpness_every_epochs = config.num_epochs
  config.sharpness_epsilon = 1e-3


def small(config):
  """Tiny synthetic data and model, 2 epochs: every code path of the sweep in seconds."""
  config.data.name = "synthetic"
  config.data.synthetic_n_train, config.data.synthetic_n_test = 256, 64
  config.data.synthetic_input_shape = (6, 6, 1)
  config.model.hidden = (16,)
  config.num_epochs = 2
  config.sweep.points = ({"batch_size": 128}, {"batch_size": 16, "learning_rate": 0.1})
  config.sweep.product.seed = (0, 1)
