"""The train step: data-parallel gradients, masking, k=1, divergence, batch order."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sgdlab import models
from sgdlab.train import step
from sgdlab import optim


def _problem(n=64, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 6, 6, 1)).astype(np.float32)
  y = rng.integers(0, 10, n).astype(np.int32)
  return x, y


MODEL = models.MLP(hidden=(16, 16), num_classes=10)
LR_FN = lambda count, lr, decay: lr / (1.0 + decay * count)


def _params():
  return MODEL.init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 1)))["params"]


def _full_batch_grad(params, x, y):
  def loss(p):
    logits = MODEL.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return jax.grad(loss)(params)


def _shard(mesh, tree):
  return jax.device_put(tree, NamedSharding(mesh, P(step.DATA)))


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-7):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


def test_data_parallel_gradient_equals_full_batch_gradient(mesh8):
  x, y = _problem()
  params = _params()
  grad = jax.jit(step.make_grad_fn(MODEL, mesh8))(
      params, _shard(mesh8, dict(x=x, y=y, mask=np.ones(64, np.float32))))
  # Not n_devices times it: shard_map's auto-summed gradient pitfall would give 8x.
  _assert_trees_close(grad, _full_batch_grad(params, x, y))


@pytest.mark.parametrize("optimizer", [optim.scale_by_lr(), optax.chain(optax.trace(0.9), optim.scale_by_lr())])
def test_one_step_on_eight_devices_equals_one_device(mesh1, mesh8, optimizer):
  x, y = _problem()
  results = []
  for mesh in (mesh1, mesh8):
    state = step.init_state(MODEL, optimizer, (6, 6, 1), seed=3, learning_rate=0.5,
                            lr_decay=1e-3)
    train_step = jax.jit(step.make_train_step(MODEL, optimizer, LR_FN, mesh))
    batch = _shard(mesh, dict(x=x, y=y, mask=np.ones(64, np.float32)))
    state, metrics = train_step(state, batch)
    state, metrics = train_step(state, batch)
    results.append((state, metrics))
  (s1, m1), (s8, m8) = results
  _assert_trees_close(s1.params, s8.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-6)
  assert int(s1.step) == int(s8.step) == 2


def test_masked_batch_is_the_mean_over_real_examples(mesh8):
  x, y = _problem(n=16)
  mask = np.zeros(16, np.float32)
  mask[[0, 1, 2, 9, 15]] = 1.0  # uneven over devices: 2 examples each, 5 real
  x_garbage = x.copy()
  x_garbage[mask == 0] = 1e6  # padding must not leak into the gradient
  params = _params()
  grad = jax.jit(step.make_grad_fn(MODEL, mesh8))(
      params, _shard(mesh8, dict(x=x_garbage, y=y, mask=mask)))
  real = mask == 1
  _assert_trees_close(grad, _full_batch_grad(params, x[real], y[real]))


def test_non_finite_loss_freezes_the_state_and_records_the_step(mesh1):
  x, y = _problem(n=8)
  tx = optim.scale_by_lr()
  state = step.init_state(MODEL, tx, (6, 6, 1), seed=0, learning_rate=0.1, lr_decay=0.0)
  train_step = jax.jit(step.make_train_step(MODEL, tx, LR_FN, mesh1))
  good = _shard(mesh1, dict(x=x, y=y, mask=np.ones(8, np.float32)))
  bad = _shard(mesh1, dict(x=np.full_like(x, np.nan), y=y, mask=np.ones(8, np.float32)))
  state, _ = train_step(state, good)
  frozen = state.params
  state, metrics = train_step(state, bad)
  assert not np.isfinite(metrics["loss"])
  assert int(state.diverged_at) == 1 and int(state.step) == 1
  state, _ = train_step(state, good)  # stays frozen once diverged
  _assert_trees_close(state.params, frozen, rtol=0, atol=0)
  assert int(state.diverged_at) == 1
