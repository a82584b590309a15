"""The trainer: histories, determinism, divergence, diagnostics, the Python API."""

import json
import math

import numpy as np
import pytest

import sgdlab
from sgdlab import config as config_lib
from sgdlab import data
from sgdlab.results import diagnostics
from sgdlab import trainer
from sgdlab.train import records
from sgdlab.errors import ConfigError
from sgdlab.results.history import History

from conftest import tiny_config


def test_history_has_per_epoch_and_per_step_curves(mesh1):
  h = trainer.train(tiny_config(), mesh=mesh1)
  assert h.epochs["epoch"] == [1, 2, 3]
  for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr", "wall_time",
              "examples_per_sec"):
    assert len(h.epochs[key]) == 3 and all(math.isfinite(v) for v in h.epochs[key])
  assert len(h.steps["loss"]) == len(h.steps["lr"]) == 3 * 7  # ceil(200 / 32) = 7 steps
  # Keras' inverse-time decay, t = optimizer steps taken before the update.
  np.testing.assert_allclose(h.steps["lr"], [0.5 / (1 + 1e-3 * t) for t in range(21)],
                             rtol=1e-6)
  assert h.epochs["train_loss"][-1] < h.epochs["train_loss"][0]
  assert not h.diverged and int(h.state.step) == 21


def test_same_seed_same_history_other_seed_differs(mesh1):
  a = trainer.train(tiny_config(), mesh=mesh1)
  b = trainer.train(tiny_config(), mesh=mesh1)
  c = trainer.train(tiny_config(seed=1), mesh=mesh1)
  assert a.steps == b.steps
  for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
    assert a.epochs[key] == b.epochs[key]
  assert a.steps["loss"] != c.steps["loss"]


def test_eight_devices_match_one_device(mesh1, mesh8):
  one = trainer.train(tiny_config(num_epochs=2), mesh=mesh1)
  eight = trainer.train(tiny_config(num_epochs=2), mesh=mesh8)
  np.testing.assert_allclose(one.steps["loss"], eight.steps["loss"], rtol=1e-4)
  np.testing.assert_allclose(one.epochs["test_accuracy"], eight.epochs["test_accuracy"],
                             atol=1e-6)


def test_cnn_with_dropout_trains(mesh1):
  h = trainer.train(tiny_config(**{"model.name": "cnn", "model.features": (4, 8),
                                   "model.dense": 16, "num_epochs": 2}), mesh=mesh1)
  assert len(h.epochs["train_loss"]) == 2 and not h.diverged


def test_divergence_stops_the_run_cleanly(mesh1):
  h = trainer.train(tiny_config(learning_rate=1e8, lr_decay=0.0, num_epochs=5), mesh=mesh1)
  assert h.diverged.startswith("diverged at step ")
  assert "(epoch " in h.diverged
  assert h.num_epochs < 5
  assert any("too large" in note for note in h.diagnostics)
  assert not math.isfinite(h.steps["loss"][-1])
  # The history survives JSON (NaN/Inf as null) and comes back with NaN.
  back = History.from_json(h.to_json())
  assert back.diverged == h.diverged and math.isnan(back.steps["loss"][-1])


def test_a_run_that_diverges_in_its_first_epoch_has_its_columns_empty(mesh1):
  config = tiny_config(learning_rate=1e8, lr_decay=0.0, num_epochs=2, noise_scale=True)
  h = trainer.train(config, mesh=mesh1)
  assert h.diverged.endswith("(epoch 1)") and h.num_epochs == 0
  assert h.epochs["train_loss"] == [] and h.epochs["noise_scale"] == []
  header = h.epochs_csv().splitlines()
  assert header == [",".join(records.epoch_columns(config, ("train", "test")))]
  # The same columns as a run that records its rows.
  fine = trainer.train(tiny_config(num_epochs=1, noise_scale=True), mesh=mesh1)
  assert list(fine.epochs) == list(h.epochs) and fine.num_epochs == 1


def test_k_must_be_a_multiple_of_the_device_count(mesh8):
  with pytest.raises(ConfigError, match="config.batch_size=12 .*multiple of the device count 8"):
    trainer.train(tiny_config(batch_size=12), mesh=mesh8)


def test_k_larger_than_the_training_set_is_refused(mesh1):
  with pytest.raises(ConfigError, match="at most the training set size 200"):
    trainer.train(tiny_config(batch_size=256), mesh=mesh1)


@pytest.mark.parametrize("field,value,words", [
    ("learning_rate", 0.0, "> 0"), ("learning_rate", -1.0, "> 0"), ("batch_size", 0, ">= 1"),
    ("lr_decay", -1e-3, ">= 0"), ("num_epochs", 0, ">= 1"), ("model.name", "vgg", "mlp"),
    ("data.name", "imagenet", "mnist"), ("schedule.name", "linear", "inverse_time"),
    ("optimizer.name", "adagrad", "lamb"), ("lr_scaling", "cube", "sqrt"),
])
def test_validation_names_the_field_and_the_valid_values(field, value, words):
  with pytest.raises(ConfigError) as e:
    config_lib.resolve(tiny_config(**{field: value}), n_devices=1)
  assert f"config.{field}={value!r}" in str(e.value) and words in str(e.value)


def test_lr_scaling_rule_sets_the_learning_rate(mesh1):
  c = tiny_config(lr_scaling="linear", base_batch_size=16, num_epochs=1)
  h = trainer.train(c, mesh=mesh1)
  assert h.steps["lr"][0] == pytest.approx(0.5 * 32 / 16)


# Test accuracy and train loss per epoch of two classic runs (seed 0, bundled MNIST).
K2048_LR1 = dict(test_accuracy=[0.44, 0.285, 0.298, 0.6, 0.368, 0.245, 0.221, 0.622, 0.597, 0.539],
                 train_loss=[2.150, 1.931, 2.606, 1.876, 1.551, 2.940, 2.315, 1.861, 1.270, 1.159],
                 train_accuracy=[0.5] * 9 + [0.6025])
K32_LR001 = dict(test_accuracy=[0.716, 0.808, 0.824, 0.843, 0.852, 0.869, 0.87, 0.88, 0.882, 0.887],
                 train_loss=[2.062, 1.511, 1.040, 0.784, 0.648, 0.566, 0.513, 0.474, 0.444, 0.422],
                 train_accuracy=[0.8] * 9 + [0.8962])


def test_diagnostics_name_a_rising_loss():
  notes = diagnostics.diagnose(K2048_LR1, diverged="", batch_size=2048, learning_rate=1.0)
  assert notes[0] == "loss rose in epochs 3, 6: lr=1 may be too large for k=2048"
  flat = dict(train_loss=[1.0, 0.5, 0.5], test_accuracy=[.9, .9, .9], train_accuracy=[.9] * 3)
  assert diagnostics.diagnose(flat, diverged="", batch_size=32, learning_rate=1.0) == []
  assert diagnostics.is_monotone(flat) and not diagnostics.is_monotone(K2048_LR1)


def test_more_epochs_is_said_only_where_the_trend_beats_the_noise():
  # k=2048 lost 5.8 points in its last epoch: no evidence that more epochs help.
  noisy = diagnostics.diagnose(K2048_LR1, diverged="", batch_size=2048, learning_rate=1.0)
  assert not any("more epochs" in n for n in noisy)
  # lr=0.01 at k=32: the loss falls smoothly, 5-6% an epoch, to the end.
  smooth = diagnostics.diagnose(K32_LR001, diverged="", batch_size=32, learning_rate=0.01)
  assert any("more epochs would help" in n and "train loss falling" in n for n in smooth)
  # Too few epochs to tell: no verdict.
  short = {k: v[:4] for k, v in K32_LR001.items()}
  assert not diagnostics.diagnose(short, diverged="", batch_size=32, learning_rate=0.01)


def test_train_network_decay_returns_a_plottable_history(tmp_path):
  h = sgdlab.train_network_decay(
      1.0, 1e-3, 64, 2, plot=tmp_path / "curves.png", dataset="synthetic",
      data__synthetic_n_train=256, data__synthetic_input_shape=(8, 8, 1),
      **{"model.hidden": (16,)})
  assert (tmp_path / "curves.png").stat().st_size > 10_000
  assert h.config["batch_size"] == 64 and h.config["lr_decay"] == 1e-3
  assert h.num_epochs == 2
  json.loads(h.to_json())
  with pytest.raises(ConfigError, match="model.widths"):
    sgdlab.train_network_decay(1.0, 1e-3, 64, 1, model__widths=(3,))


def test_config_round_trips_through_json():
  c = tiny_config(batch_size=64)
  back = config_lib.from_dict(json.loads(json.dumps(config_lib.to_dict(c))))
  assert back.to_dict() == c.to_dict()
  assert data.describe(back.data).n_train == 200
