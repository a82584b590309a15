r"""Edge of stability: full-batch gradient descent, the top Hessian eigenvalue against 2 / lr.

  python -m sgdlab.launch --config=experiments/edge_of_stability.py --workdir=runs/eos

Cohen et al. (2021) found that full-batch GD first sharpens (lambda_max rises) until
lambda_max reaches 2 / lr, then hovers there while the loss keeps falling, not
monotonically: the condition behind the folklore "a loss that is not monotone means the
lr is too large". Here: MLP 784-256-256-10 (ReLU, glorot weights), cross-entropy, the
first 1,000 bundled MNIST training digits as one batch (k = 1,000: one update an epoch),
plain SGD at constant lr 0.1, 0.2 and 0.4 (2 / lr = 20, 10, 5), 400 updates,
lambda_max after every update by 20 Lanczos products on the whole batch; the three lrs
train as one population. Writes summary.md (lr x lambda_max against 2 in the
diagnostics) and sharpness_over_steps.png. About 5 minutes on 2 CPU cores;
docs/curvature.md has the figure and what it shows.

  --config=experiments/edge_of_stability.py:small   a tiny MLP on synthetic data, 6
      updates (seconds; what the tests run)
"""

from sgdlab.config import default_config


def get_config(variant: str = ""):
  config = default_config()
  config.model.name, config.model.hidden = "mlp", (256, 256)
  config.model.kernel_init, config.model.dropout = "glorot_uniform", 0.0
  config.data.n_train = 1000
  config.batch_size = 1000  # full batch: one update an epoch
  config.num_epochs = 400
  config.optimizer.name, config.schedule.name, config.lr_decay = "sgd", "constant", 0.0
  config.sharpness_batches, config.sharpness_iterations = 1, 20
  config.sweep.product.learning_rate = (0.4, 0.2, 0.1)
  config.population = True
  if variant == "small":
    config.data.name = "synthetic"
    config.data.synthetic_n_train, config.data.synthetic_n_test = 128, 64
    config.data.synthetic_input_shape = (6, 6, 1)
    config.data.n_train, config.batch_size, config.num_epochs = 0, 128, 6
    config.model.hidden, config.sharpness_iterations = (16,), 8
  return config
