"""The ImageNet recipes say what their papers say, and their small variants train."""

from __future__ import annotations

import os

import numpy as np
import pytest

from sgdlab import config as config_lib, optim
from sgdlab.config import recipes
from sgdlab.sweep import runner
from conftest import experiment
from sgdlab.results import files


def _lr_at_epochs(name, epochs, n_devices):
  """The recipe's lr at the start of each epoch, resolved for ImageNet's 1,281,167
  training images (shapes only: nothing is read)."""
  c = experiment(name).get_config()
  c.data.name, c.data.synthetic_input_shape = "synthetic", (224, 224, 3)
  c.data.synthetic_n_train, c.data.synthetic_num_classes = recipes.IMAGENET_TRAIN, 1000
  c.data.image_size = 0
  r = config_lib.resolve(c, n_devices=n_devices)
  schedule = optim.build_schedule(r.schedule, r.learning_rate, 0.0, r.total_steps)
  steps = recipes.IMAGENET_TRAIN // c.batch_size
  return r, [float(schedule(e * steps)) for e in epochs]


def test_goyal_is_lr_0_1_x_k_over_256_warmed_up_from_0_1_and_divided_at_30_60_80():
  r, lrs = _lr_at_epochs("goyal_imagenet", (0, 5, 29, 30, 60, 80, 89), 256)
  np.testing.assert_allclose(lrs, [0.1, 3.2, 3.2, 0.32, 0.032, 0.0032, 0.0032], rtol=1e-5)
  c = r.config
  assert (c.batch_size, r.per_device_batch, c.num_epochs) == (8192, 32, 90)
  assert (c.optimizer.name, c.optimizer.momentum, c.optimizer.weight_decay) == (
      "momentum", 0.9, 1e-4)
  assert c.optimizer.decay_params == "matrices"  # no decay on batch norm's scale, offset
  assert (c.model.name, c.model.imagenet_depth, c.data.pipeline) == (
      "imagenet_resnet", 50, "grain")


def test_lars_warms_up_5_epochs_then_decays_polynomially_to_zero_at_90():
  r, lrs = _lr_at_epochs("lars_imagenet", (0, 5, 47.5, 90), 256)
  peak = r.learning_rate
  np.testing.assert_allclose(lrs, [0.0, peak, peak / 4, 0.0], rtol=1e-3, atol=1e-6)
  c = r.config
  assert (c.batch_size, c.optimizer.name, c.optimizer.trust_coefficient) == (32768, "lars",
                                                                            0.001)
  assert c.label_smoothing == 0.1 and c.schedule.power == 2.0


@pytest.mark.slow  # ResNet-50 compiles: about a minute each on 2 CPU cores
@pytest.mark.parametrize("name", ["goyal_imagenet",
                                  "lars_imagenet"])
def test_the_recipes_small_variants_train(tmp_path, name):
  config = experiment(name).get_config("small")
  assert runner.run_sweep(config, runner.Options(str(tmp_path))) == 0
  (point,) = [str(tmp_path / d) for d in os.listdir(tmp_path)
              if os.path.isfile(tmp_path / d / "history.json")]
  history = files.load_history(point)
  assert files.status(point)["status"] == "done"
  assert len(history.epochs["test_accuracy"]) == config.num_epochs
  assert np.all(np.isfinite(history.steps["loss"]))
