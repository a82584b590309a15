"""Population training: each member reproduces its separate run; divergence is per member."""

import math
import os
import shutil

import jax
import numpy as np
import pytest

import conftest
from sgdlab.sweep import expand as sweep
from sgdlab.sweep import groups as population
from sgdlab import trainer
from sgdlab.errors import ConfigError


def tiny_config(**overrides):
  """conftest's tiny run, 2 epochs."""
  return conftest.tiny_config(**{"num_epochs": 2, **overrides})


def assert_same_history(member, alone, rtol=1e-4, atol=1e-5):
  assert member.name == alone.name and member.config == alone.config
  assert member.diverged == alone.diverged
  assert member.diagnostics == alone.diagnostics
  assert member.epochs.keys() == alone.epochs.keys()
  assert member.steps.keys() == alone.steps.keys()
  for key, values in alone.steps.items():
    np.testing.assert_allclose(member.steps[key], values, rtol=rtol, atol=atol, err_msg=key)
  for key, values in alone.epochs.items():
    if key not in ("wall_time", "examples_per_sec"):
      np.testing.assert_allclose(member.epochs[key], values, rtol=rtol, atol=atol, err_msg=key)
  assert int(member.state.step) == int(alone.state.step)
  assert int(member.state.diverged_at) == int(alone.state.diverged_at)


def check_against_separate_runs(configs, mesh):
  members = trainer.train_population(configs, mesh=mesh)
  assert len(members) == len(configs)
  for member, config in zip(members, configs):
    assert_same_history(member, trainer.train(config, mesh=mesh))
  return members


def test_members_with_one_seed_match_separate_runs(mesh1):
  configs = [tiny_config(learning_rate=0.5), tiny_config(learning_rate=0.1),
             tiny_config(learning_rate=0.5, lr_decay=0.0)]
  members = check_against_separate_runs(configs, mesh1)
  # The members really differ: a population is not one run repeated.
  assert members[0].steps["loss"][-1] != members[1].steps["loss"][-1]
  assert members[0].steps["lr"][-1] != members[2].steps["lr"][-1]


def test_members_with_their_own_seeds_keep_their_own_batch_order(mesh1):
  configs = [tiny_config(seed=0), tiny_config(seed=1, learning_rate=0.1), tiny_config(seed=2)]
  members = check_against_separate_runs(configs, mesh1)
  assert members[0].steps["loss"][0] != members[2].steps["loss"][0]


def test_eight_devices_with_noise_scale_match_separate_runs(mesh8):
  configs = [tiny_config(seed=s, learning_rate=lr, noise_scale=True)
             for s, lr in ((0, 0.5), (3, 0.2))]
  members = check_against_separate_runs(configs, mesh8)
  assert all(math.isfinite(m.epochs["noise_scale"][-1]) for m in members)


def test_a_diverged_member_does_not_stop_the_others(mesh1):
  configs = [tiny_config(num_epochs=3), tiny_config(learning_rate=1e8, lr_decay=0.0,
                                                    num_epochs=3)]
  good, bad = check_against_separate_runs(configs, mesh1)
  assert bad.diverged.startswith("diverged at step ") and bad.num_epochs < 3
  assert not math.isfinite(bad.steps["loss"][-1])
  assert any("too large" in note for note in bad.diagnostics)
  assert not good.diverged and good.num_epochs == 3 and int(good.state.step) == 3 * 7


def test_the_run_ends_when_every_member_diverged(mesh1):
  configs = [tiny_config(learning_rate=lr, lr_decay=0.0, num_epochs=50) for lr in (1e8, 1e9)]
  members = trainer.train_population(configs, mesh=mesh1)
  assert all(m.diverged for m in members)
  assert all(len(m.steps["loss"]) < 50 * 7 for m in members)


def test_group_keeps_together_only_points_that_differ_in_lr_decay_seed():
  c = tiny_config(population=True)
  c.sweep.product.batch_size = (32, 64)
  c.sweep.product.learning_rate = (1.0, 0.1)
  c.sweep.product.lr_decay = (1e-3, 0.0)
  c.sweep.product.seed = (0, 1)
  points = sweep.expand(c)
  groups = population.group(points)
  assert [len(g) for g in groups] == [8, 8]
  assert [{p.config.batch_size for p in g} for g in groups] == [{32}, {64}]
  assert sorted(p.index for g in groups for p in g) == list(range(16))
  assert [len(g) for g in population.group(points, max_size=3)] == [3, 3, 2, 3, 3, 2]
  c.population = False
  assert [len(g) for g in population.group(sweep.expand(c))] == [1] * 16
  c.population, c.batch_size = True, "auto"
  c.sweep.product.batch_size = ("auto",)
  assert [len(g) for g in population.group(sweep.expand(c))] == [1] * 8


def test_members_that_differ_elsewhere_are_refused_by_name(mesh1):
  with pytest.raises(ConfigError, match=r"config\.batch_size=64 .*may differ only in"):
    trainer.train_population([tiny_config(), tiny_config(batch_size=64)], mesh=mesh1)
  with pytest.raises(ConfigError, match=r"config\.model\.hidden="):
    trainer.train_population([tiny_config(), tiny_config(**{"model.hidden": (16,)})],
                                mesh=mesh1)
  with pytest.raises(ConfigError, match=r"config\.learning_rate=0\.0"):
    trainer.train_population([tiny_config(), tiny_config(learning_rate=0.0)], mesh=mesh1)
  with pytest.raises(ConfigError, match=r"config\.batch_size='auto' .*fixed k"):
    trainer.train_population([tiny_config(batch_size="auto"), tiny_config()], mesh=mesh1)


def test_one_config_is_one_plain_run(mesh1):
  (alone,) = trainer.train_population([tiny_config(num_epochs=1)], mesh=mesh1)
  assert alone.steps == trainer.train(tiny_config(num_epochs=1), mesh=mesh1).steps
  assert trainer.train_population([], mesh=mesh1) == []


def test_a_population_resumes_from_its_checkpoint_bitwise(mesh1, tmp_path):
  configs = [tiny_config(num_epochs=3, checkpoint_every_epochs=1, learning_rate=lr, seed=s)
             for lr, s in ((0.5, 0), (0.1, 1), (1e9, 0))]  # the last member diverges
  ckpt = str(tmp_path / "ckpt")
  full = trainer.train_population(configs, mesh=mesh1, checkpoint_dir=ckpt)
  assert sorted(os.listdir(ckpt)) == ["2", "3"] and full[2].diverged
  shutil.rmtree(os.path.join(ckpt, "3"))  # as if killed during epoch 3
  resumed = trainer.train_population(configs, mesh=mesh1, checkpoint_dir=ckpt)
  for a, b in zip(full, resumed):
    assert a.diverged == b.diverged and a.steps.keys() == b.steps.keys()
    for key in a.steps:  # NaN where the member diverged: equal as arrays, not as lists
      np.testing.assert_array_equal(a.steps[key], b.steps[key])
    assert a.epochs.get("test_loss") == b.epochs.get("test_loss")
    assert a.epochs.get("wall_time", [])[:2] == b.epochs.get("wall_time", [])[:2]  # restored
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", ["adam", "lamb", "lars"])
def test_an_adaptive_or_trust_ratio_population_matches_its_members_run_alone(name, mesh1):
  """Their states hold moments (and LARS its lr-scaled trace): each member keeps its own."""
  lrs = dict(adam=(1e-3, 3e-3), lamb=(1e-3, 1e-2), lars=(1.0, 3.0))[name]
  configs = [tiny_config(learning_rate=lr, lr_decay=0.0, **{"optimizer.name": name})
             for lr in lrs]
  members = check_against_separate_runs(configs, mesh1)
  assert members[0].steps["loss"][-1] != members[1].steps["loss"][-1]
