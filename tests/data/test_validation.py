"""The validation split: held out of training, evaluated every epoch, a target's split."""

from __future__ import annotations

import numpy as np
import pytest

import conftest
from sgdlab import config as config_lib, data
from sgdlab.errors import ConfigError
from sgdlab import trainer
from sgdlab.train import loop, run as run_lib


def test_the_validation_split_is_held_out_of_training():
  c = conftest.tiny_config(**{"data.validation_fraction": 0.25})
  whole = data.load(conftest.tiny_config().data)
  held = data.load(c.data)
  assert (held.n_train, held.n_validation) == (150, 50)
  assert data.describe(c.data) == held.spec()
  rows = {r.tobytes() for r in whole.x_train}
  train, val = ({r.tobytes() for r in x} for x in (held.x_train, held.x_validation))
  assert not train & val and train | val == rows  # a partition of the training set
  np.testing.assert_array_equal(held.x_test, whole.x_test)  # the test set untouched
  again = data.load(c.data)
  np.testing.assert_array_equal(again.x_validation, held.x_validation)


def test_every_epoch_reports_validation_and_a_target_can_use_it(mesh1):
  c = conftest.tiny_config(**{"data.validation_fraction": 0.25})
  h = trainer.train(c, mesh=mesh1)
  assert len(h.epochs["validation_loss"]) == len(h.epochs["test_loss"]) == 3
  assert "validation_loss" not in trainer.train(conftest.tiny_config(), mesh=mesh1).epochs
  run = run_lib.create_run(config_lib.resolve(c, n_devices=1), mesh=mesh1)
  (h,) = loop.run_loop(run, eval_steps=[2, 4], target=loop.Target("validation_accuracy", 0.0))
  assert h.reached == 2 and "validation_accuracy" in h.evals


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_a_bad_fraction_is_a_config_error(fraction):
  with pytest.raises(ConfigError) as e:
    data.describe(conftest.tiny_config(**{"data.validation_fraction": fraction}).data)
  assert e.value.field == "data.validation_fraction"
