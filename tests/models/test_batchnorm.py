"""Batch norm and the ResNet: statistics in training, running averages in evaluation,
ghost and synchronized statistics, one running-average update per optimizer update."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import conftest
from sgdlab import config as config_lib, models, optim
from sgdlab.errors import ConfigError
from sgdlab.models.batchnorm import BatchNorm
from sgdlab import trainer
from sgdlab.train import program as program_lib, run as run_lib, step


def _x(n=32, c=3, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (n, 4, 4, c)) * 3.0 + 1.5


def _resnet_config(**overrides):
  return conftest.tiny_config(**{
      "model.name": "resnet", "model.resnet_width": 4, "data.synthetic_input_shape": (8, 8, 3),
      "drop_remainder": True, "optimizer.name": "momentum", "optimizer.weight_decay": 5e-4,
      "learning_rate": 0.05, "model.conv_impl": "xla", **overrides})  # xla: compiles fastest


def test_training_uses_batch_statistics_and_evaluation_the_running_averages():
  bn, x = BatchNorm(), _x()
  variables = bn.init(jax.random.PRNGKey(0), x)
  assert set(variables["batch_stats"]) == {"mean", "var"}
  y, moments = bn.apply({"params": variables["params"]}, x, train=True,
                        mutable=["batch_moments"])
  np.testing.assert_allclose(jnp.mean(y, (0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(jnp.var(y, (0, 1, 2)), 1.0, rtol=1e-3)
  np.testing.assert_allclose(moments["batch_moments"]["mean"], jnp.mean(x, (0, 1, 2)),
                             rtol=1e-5)
  stats = dict(mean=jnp.array([1.0, -2.0, 0.5]), var=jnp.array([4.0, 1.0, 9.0]))
  y_eval = bn.apply({"params": variables["params"], "batch_stats": stats}, x)
  np.testing.assert_allclose(y_eval, (x - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-5),
                             rtol=1e-5, atol=1e-6)


def test_ghost_batch_norm_equals_statistics_per_virtual_batch():
  x = _x(24)
  ghost = BatchNorm(mode="virtual", virtual_batch_size=8)
  params = {"params": ghost.init(jax.random.PRNGKey(0), x)["params"]}
  y, moments = ghost.apply(params, x, train=True, mutable=["batch_moments"])
  plain = BatchNorm()
  parts = [plain.apply(params, x[i:i + 8], train=True, mutable=["batch_moments"])
           for i in range(0, 24, 8)]
  np.testing.assert_allclose(y, jnp.concatenate([p[0] for p in parts]), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(moments["batch_moments"]["var"],
                             np.mean([p[1]["batch_moments"]["var"] for p in parts], 0),
                             rtol=1e-6)


def test_synchronized_batch_norm_on_8_devices_equals_one_device_on_the_whole_batch(mesh8):
  x = _x(64)
  sync = BatchNorm(mode="sync")
  params = {"params": sync.init(jax.random.PRNGKey(0), x)["params"]}

  def local(x):
    y, m = sync.apply(params, x, train=True, mutable=["batch_moments"])
    return y, m["batch_moments"]

  y8, m8 = jax.jit(jax.shard_map(local, mesh=mesh8, in_specs=P(step.DATA),
                                 out_specs=(P(step.DATA), P()), check_vma=False))(x)
  y1, m1 = BatchNorm().apply(params, x, train=True, mutable=["batch_moments"])
  np.testing.assert_allclose(y8, y1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m8["var"], m1["batch_moments"]["var"], rtol=1e-5)


@pytest.mark.slow
def test_the_resnet_gradient_with_synchronized_batch_norm_on_8_devices_equals_one_device(mesh8):
  x = _x(64)
  model = models.build(config_lib.resolve(_resnet_config(**{"model.bn_mode": "sync"}),
                                          n_devices=8).config.model, 10)
  variables = model.init(jax.random.PRNGKey(1), x[:1])
  batch = dict(x=x, y=jnp.arange(64) % 10, mask=jnp.ones(64))
  g8 = jax.jit(step.make_grad_fn(model, mesh8))(variables["params"], batch)
  model1 = models.build(config_lib.resolve(_resnet_config(), n_devices=1).config.model, 10)
  g1 = jax.jit(step.make_grad_fn(model1, step.make_mesh(jax.devices()[:1])))(
      variables["params"], batch)
  for a, b in zip(jax.tree.leaves(g8), jax.tree.leaves(g1), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("microbatch", [pytest.param(0, marks=pytest.mark.slow), 8])
def test_running_averages_move_once_per_optimizer_update(mesh1, microbatch):
  """From r = 0 with momentum 0.9: r = 0.1 x the update's moments, whatever the number of
  micro-batches (their moments averaged)."""
  resolved = config_lib.resolve(_resnet_config(batch_size=32, microbatch_size=microbatch),
                                n_devices=1)
  program = program_lib.build_program(resolved, mesh1)
  state = program.init_state()
  state = state.replace(batch_stats=jax.tree.map(jnp.zeros_like, state.batch_stats))
  x = jnp.tile(_x(32, seed=3), (1, 2, 2, 1))  # 8x8x3 inputs
  batch = dict(x=x, y=jnp.arange(32) % 10, mask=jnp.ones(32))
  new, _ = jax.jit(program.train_step)(state, batch)
  assert int(new.step) == 1
  size = microbatch or 32
  parts = [program.model.apply({"params": state.params}, x[i:i + size], train=True,
                               mutable=["batch_moments"])[1] for i in range(0, 32, size)]
  expected = np.mean([p["batch_moments"]["stem_bn"]["mean"] for p in parts], 0)
  np.testing.assert_allclose(new.batch_stats["stem_bn"]["mean"], 0.1 * expected, rtol=1e-5,
                             atol=1e-7)


@pytest.mark.slow
def test_a_resnet_resumes_bitwise_with_its_running_averages(mesh1, tmp_path):
  config = _resnet_config(num_epochs=3, checkpoint_every_epochs=1)
  ckpt = str(tmp_path / "ckpt")
  plain = trainer.train(config, mesh=mesh1, checkpoint_dir=ckpt)  # checkpoints change nothing
  shutil.rmtree(f"{ckpt}/3")
  resumed = trainer.train(config, mesh=mesh1, checkpoint_dir=ckpt)
  for a, b in zip(jax.tree.leaves(plain.state), jax.tree.leaves(resumed.state), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert plain.epochs["test_loss"] == resumed.epochs["test_loss"]
  assert np.any(np.asarray(plain.state.batch_stats["stem_bn"]["var"]) != 1.0)


def test_evaluation_reads_the_running_averages(mesh1):
  resolved = config_lib.resolve(_resnet_config(num_epochs=1), n_devices=1)
  run = run_lib.create_run(resolved, mesh=mesh1, compile_now=False)
  state = run.init_state()
  base = run.evaluate(step.eval_variables(state))
  shifted = state.replace(batch_stats=jax.tree.map(lambda a: a + 0.5, state.batch_stats))
  assert float(run.evaluate(step.eval_variables(shifted))["loss"]) != float(base["loss"])


@pytest.mark.slow
def test_a_resnet_population_is_its_members_run_alone(mesh1):
  members = [_resnet_config(learning_rate=lr, seed=s) for lr, s in ((0.05, 0), (0.02, 1))]
  population = trainer.train_population(members, mesh=mesh1)
  for config, history in list(zip(members, population))[1:]:  # the other lr and seed
    alone = trainer.train(config, mesh=mesh1)
    np.testing.assert_allclose(history.steps["loss"], alone.steps["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(history.state.batch_stats),
                    jax.tree.leaves(alone.state.batch_stats)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_weight_decay_adds_wd_times_the_weights_to_the_gradient():
  cfg = optim.optimizer_config()
  cfg.weight_decay = 0.01
  tx = optim.optimizer(cfg)
  params, grads = dict(w=jnp.array([2.0, -4.0])), dict(w=jnp.array([0.5, 0.5]))
  u, _ = tx.update(grads, tx.init(params), params, lr=jnp.float32(1.0))
  np.testing.assert_allclose(u["w"], [-0.52, -0.46], rtol=1e-6)


@pytest.mark.parametrize("overrides,field", [
    ({"drop_remainder": False}, "drop_remainder"),  # 200 examples, k=32: padding
    ({"model.bn_mode": "virtual", "model.bn_virtual_batch_size": 5}, "model.bn_virtual_batch_size"),
    ({"model.bn_mode": "virtual", "model.bn_virtual_batch_size": 0}, "model.bn_virtual_batch_size"),
    ({"model.bn_mode": "global"}, "model.bn_mode"),
    ({"model.resnet_depth": 10}, "model.resnet_depth"),
    ({"optimizer.weight_decay": -1.0}, "optimizer.weight_decay"),
    ({"batch_size": "auto", "drop_remainder": False}, "drop_remainder"),
])
def test_bad_batch_norm_fields_name_the_field(overrides, field):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.") + "="):
    config_lib.resolve(_resnet_config(**overrides), n_devices=1)


def test_the_batch_size_search_keeps_whole_virtual_batches(mesh1):
  """batch_size="auto" with ghost batch norm: every candidate k a multiple of the
  virtual batch (here 3, so powers of two alone would not do)."""
  from memory_support import budget  # pylint: disable=g-import-not-at-top
  from sgdlab.memory import search  # pylint: disable=g-import-not-at-top
  config = _resnet_config(**{"batch_size": "auto", "model.bn_mode": "virtual",
                             "model.bn_virtual_batch_size": 3})
  assert config_lib.resolve(config, n_devices=8).batch_unit == 24
  report = search.find_batch_size(config, budget(2 << 30), mesh=mesh1, check_trainer=False)
  assert report.largest_power_of_two == 3 * 64 and report.largest_k == 198  # 200 // 3 * 3
