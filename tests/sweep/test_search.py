"""Quasi-random search (sgdlab.sweep.search): draws in their ranges and scales, even
coverage, determinism, trials as ordinary sweep points, and one line per bad setting."""

import math

import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from sgdlab import ConfigError
from sgdlab.sweep import expand, groups, search


def _search(trials=16, seed=0, **space):
  return ml_collections.ConfigDict(dict(trials=trials, seed=seed,
                                        space=ml_collections.ConfigDict(space)))


LR = dict(min=1e-3, max=10.0, scale="log")
MOMENTUM = dict(min=0.5, max=0.999, scale="reverse_log")


def test_draws_are_deterministic_for_a_seed_and_plain_python_values():
  a = search.trials(_search(learning_rate=LR, optimizer=dict(momentum=MOMENTUM)))
  assert a == search.trials(_search(learning_rate=LR, optimizer=dict(momentum=MOMENTUM)))
  assert a != search.trials(_search(seed=1, learning_rate=LR, optimizer=dict(momentum=MOMENTUM)))
  assert len(a) == 16 and set(a[0]) == {"learning_rate", "optimizer.momentum"}
  assert all(type(v) is float for t in a for v in t.values())


def test_log_draws_fill_each_decade_evenly():
  draws = [t["learning_rate"] for t in search.trials(_search(trials=40, learning_rate=LR))]
  assert all(1e-3 <= x <= 10 for x in draws)
  per_decade = np.histogram(np.log10(draws), bins=4, range=(-3, 1))[0]
  # 10 expected per decade; independent uniform draws miss by ~3 (one sigma), Halton by <= 1.
  assert per_decade.min() >= 9 and per_decade.max() <= 11, per_decade


def test_reverse_log_draws_are_uniform_in_log_of_one_minus_the_value():
  draws = np.array([t["m"] for t in search.trials(_search(trials=32, m=MOMENTUM))])
  assert draws.min() >= 0.5 and draws.max() <= 0.999
  u = (np.log1p(-draws) - math.log1p(-0.5)) / (math.log1p(-0.999) - math.log1p(-0.5))
  assert np.histogram(u, bins=4, range=(0, 1))[0].tolist() == [8, 8, 8, 8]
  assert np.median(draws) > 0.95  # crowded toward 1: the linear midpoint would be 0.75


def test_choices_and_integers_are_all_drawn():
  drawn = search.trials(_search(trials=12, name=dict(choices=("momentum", "adam", "lamb")),
                                width=dict(min=16, max=64, scale="log", integer=True)))
  assert sorted({t["name"] for t in drawn}) == ["adam", "lamb", "momentum"]
  assert all(type(t["width"]) is int and 16 <= t["width"] <= 64 for t in drawn)


def test_trials_are_points_multiplied_with_the_grid_with_the_same_draws_at_every_k():
  c = tiny_config()
  c.sweep.product.batch_size = (16, 64)
  c.sweep.search = _search(trials=3, learning_rate=LR)
  points = expand.expand(c)
  assert len(points) == 6 and [p.trial for p in points] == [0, 1, 2, 0, 1, 2]
  lrs = [p.overrides["learning_rate"] for p in points]
  assert lrs[:3] == lrs[3:] and len(set(lrs)) == 3
  assert points[0].id.startswith("trial0_k16-")
  assert all(p.config.sweep.search.trials == 0 for p in points)
  assert [p.id for p in expand.expand(c)] == [p.id for p in points]  # stable: resumable
  assert expand.axes(c)["learning_rate"] == "sweep.search.space"


def test_trials_that_search_only_the_lr_run_as_one_population():
  c = tiny_config()
  c.population = True
  c.sweep.search = _search(trials=4, learning_rate=LR)
  points = expand.expand(c)
  assert [len(g) for g in groups.group(points)] == [4]


@pytest.mark.parametrize("space,trials,match", [
    (dict(learning_rate=dict(min=1.0, max=0.1, scale="log")), 4, "learning_rate.max"),
    (dict(learning_rate=dict(min=0.0, max=1.0, scale="log")), 4, "learning_rate.min"),
    (dict(optimizer=dict(momentum=dict(min=0.5, max=1.0, scale="reverse_log"))), 4,
     "optimizer.momentum.max"),
    (dict(optimizer=dict(momentum=dict(min=-0.1, max=0.9, scale="reverse_log"))), 4,
     "optimizer.momentum.min"),
    (dict(learning_rate=dict(min=0.1, max=1.0, scale="cubic")), 4, "learning_rate.scale"),
    (dict(learning_rate=dict(choices=())), 4, "learning_rate.choices"),
    (dict(learning_rate=0.1), 4, "space.learning_rate"),
    (dict(learning_rate=LR), 0, "sweep.search.trials"),
    (dict(learnin_rate=LR), 4, "learnin_rate"),
    (dict(batch_size=dict(choices=(16, 32))), 4, "space.batch_size=.*also swept"),
])
def test_each_bad_setting_is_one_config_error_naming_it(space, trials, match):
  c = tiny_config()
  c.sweep.product.batch_size = (16, 32)
  c.sweep.search = _search(trials=trials, **space)
  with pytest.raises(ConfigError, match=match):
    expand.expand(c)
