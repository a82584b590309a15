r"""The classic lr x decay sweep at k=32, trained as one population program.

  python -m sgdlab.launch --config=experiments/population_lr_sweep.py --workdir=runs/pop_lr

MLP 784-512-512-10 on the bundled MNIST, k=32, 10 epochs, SGD with Keras decay:
lr in (1, 0.1, 0.01) x lr_decay in (1e-3, 0): six runs that differ only in numbers the
step reads from its state, so with `population = True` the launcher trains them as one
vmapped program and writes each run to its own point folder, as separate runs would.
It shows which lr is too large at small k (a loss that rises, or a divergence that
stops only that member) and whether decay helps the smaller rates within 10 epochs.
Seeds can join the same population (each member keeps its own batch order, so each
still equals its separate run): add
  --config.sweep.points="({'seed': 0}, {'seed': 1}, {'seed': 2})"
for 18 runs in one program. The population checkpoints and resumes like a single run
(checkpoint_every_epochs). --config=experiments/population_lr_sweep.py:small runs the
same sweep on tiny synthetic data in seconds (the tests). The full sweep's cost on 2
CPU cores is not yet timed on a quiet machine (six runs of 10 epochs at k=32 in one
program).
"""

from sgdlab.config import default_config


def get_config(variant: str = ""):
  config = default_config()
  config.model.name = "mlp"
  config.model.hidden = (512, 512)
  config.batch_size = 32
  config.num_epochs = 10
  config.schedule.name = "inverse_time"
  config.population = True
  config.sweep.product.learning_rate = (1.0, 0.1, 0.01)
  config.sweep.product.lr_decay = (1e-3, 0.0)
  if variant == "small":
    config.data.name = "synthetic"
    config.data.synthetic_n_train, config.data.synthetic_n_test = 256, 64
    config.data.synthetic_input_shape = (6, 6, 1)
    config.model.hidden = (16,)
    config.num_epochs, config.checkpoint_every_epochs = 2, 1
  return config
