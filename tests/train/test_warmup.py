"""Warmup in epochs and from the unscaled lr (Goyal et al. 2017), resolved per k; bad
warmups refused before anything compiles."""

from __future__ import annotations

import numpy as np
import pytest

from sgdlab import config as config_lib
from sgdlab import optim, trainer
from sgdlab.errors import ConfigError


def _config(k=64, **schedule):
  c = config_lib.default_config()
  c.data.name = "synthetic"
  c.data.synthetic_n_train, c.data.synthetic_n_test = 256, 64
  c.data.synthetic_input_shape = (6, 6, 1)
  c.model.name, c.model.hidden = "mlp", (8,)
  c.batch_size, c.num_epochs, c.learning_rate = k, 10, 0.1
  c.schedule.update(schedule)
  return c


def _lrs(c, counts):
  r = config_lib.resolve(c, n_devices=1)
  s = optim.build_schedule(r.schedule, r.learning_rate, c.lr_decay, r.total_steps)
  return r, np.asarray([float(s(t)) for t in counts])


def test_warmup_in_epochs_is_the_same_schedule_as_in_steps():
  # 256 examples at k=64: 4 updates an epoch, so 2.5 epochs are 10 updates.
  by_epochs = _lrs(_config(name="polynomial", warmup_epochs=2.5), range(41))[1]
  by_steps = _lrs(_config(name="polynomial", warmup_steps=10), range(41))[1]
  np.testing.assert_array_equal(by_epochs, by_steps)
  assert by_steps[10] == pytest.approx(0.1) and by_steps[5] == pytest.approx(0.05)


def test_goyal_warmup_starts_at_the_unscaled_lr_and_scales_with_k():
  # lr 0.1 per 32 examples, linear scaling to k=128: 0.4, reached after 2 epochs from 0.1.
  c = _config(k=128, name="step", boundaries=(6,), warmup_epochs=2, warmup_from="base")
  c.lr_scaling, c.base_batch_size = "linear", 32
  r, lrs = _lrs(c, range(10))  # 2 updates an epoch: warmup 4 updates, step at 4 + 6
  assert r.lr_scale == 4.0
  np.testing.assert_allclose(lrs, [0.1, 0.175, 0.25, 0.325, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4],
                             rtol=1e-6)
  c.batch_size = 32  # at the base k the same config has no ramp left
  np.testing.assert_allclose(_lrs(c, range(4))[1], [0.1] * 4, rtol=1e-6)


def test_a_run_trains_on_its_resolved_warmup():
  h = trainer.train(_config(k=64, name="constant", warmup_epochs=2))
  # The history's lr is the last update's of each epoch: 4, 8 of the 8-update ramp.
  np.testing.assert_allclose(h.epochs["lr"][:3], [0.1 * 3 / 8, 0.1 * 7 / 8, 0.1], rtol=1e-5)


@pytest.mark.parametrize("schedule,field,words", [
    (dict(warmup_epochs=11), "warmup_epochs", "within the run's 40 updates"),
    (dict(warmup_steps=41), "warmup_steps", "this is 41 updates"),
    (dict(warmup_steps=4, warmup_epochs=1), "warmup_epochs", "0 when warmup_steps=4"),
    (dict(name="polynomial", warmup_steps=40), "decay_steps", "leaves 0"),
    (dict(warmup_epochs=1, warmup_from="base"), "warmup_from", "lowers this k's lr"),
])
def test_bad_warmups_name_their_field(schedule, field, words):
  c = _config(**schedule)
  c.lr_scaling, c.base_batch_size = "linear", 128  # k=64 below the base: scaled down
  with pytest.raises(ConfigError, match=f"config.schedule.{field}=") as e:
    config_lib.resolve(c, n_devices=1)
  assert words in str(e.value)
