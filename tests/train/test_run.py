"""The Run: batch orders, the advance program, calls of any length, populations."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from sgdlab import config as config_lib
from sgdlab import data, models
from sgdlab.data import pipeline
from sgdlab.train import loop, run as run_lib


def _run(mesh, **overrides):
  c = tiny_config(**overrides)
  resolved = config_lib.resolve(c, n_devices=mesh.size)
  return run_lib.create_run(resolved, data.load(resolved.config.data), mesh)


def test_batch_plan_sees_every_example_once():
  feed = pipeline.batch_order(10, 4, jax.random.PRNGKey(0))
  idx, mask = np.asarray(feed["idx"]), np.asarray(feed["mask"])
  assert idx.shape == mask.shape == (3, 4)
  assert sorted(idx[mask == 1].tolist()) == list(range(10))
  assert mask.sum() == 10 and mask[-1].tolist() == [1, 1, 0, 0]
  assert not np.array_equal(idx, pipeline.batch_order(10, 4, jax.random.PRNGKey(1))["idx"])


def test_drop_remainder_keeps_only_full_batches():
  feed = pipeline.batch_order(10, 4, jax.random.PRNGKey(0), drop_remainder=True)
  assert feed["idx"].shape == (2, 4) and np.all(np.asarray(feed["mask"]) == 1)
  assert len(set(np.asarray(feed["idx"]).ravel().tolist())) == 8


def test_an_epoch_at_k1_is_per_example_sgd(mesh1):
  run = _run(mesh1, batch_size=1, **{"data.synthetic_n_train": 5, "lr_decay": 0.5,
                                     "learning_rate": 0.1})
  program = run.program
  state = run.init_state()
  params = jax.device_get(state.params)
  x, y = run.dataset.x_train, run.dataset.y_train
  order = np.asarray(run.order(0)["idx"])[:, 0]

  def loss(p, i):
    logits = program.model.apply({"params": p}, x[i:i + 1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y[i:i + 1]).mean()

  for t, i in enumerate(order):
    lr = 0.1 / (1 + 0.5 * t)
    params = jax.tree.map(lambda p, g: p - lr * g, params, jax.grad(loss)(params, i))
  state, metrics = run.advance(state, run.order(0))
  assert metrics["loss"].shape == (5,)
  np.testing.assert_allclose(metrics["lr"], [0.1 / (1 + 0.5 * t) for t in range(5)], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("steps_per_call", [1, 3])
def test_calls_of_any_length_give_the_bits_of_one_epoch_call(mesh1, steps_per_call):
  # steps_per_call is a speed knob (per-step dispatch for conv nets on CPU), not a result.
  whole = loop.run_loop(_run(mesh1))[0]
  pieces = loop.run_loop(_run(mesh1, steps_per_call=steps_per_call))[0]
  assert pieces.steps["loss"] == whole.steps["loss"]
  assert pieces.epochs["test_loss"] == whole.epochs["test_loss"]


def test_chunks_cover_any_length_with_few_distinct_calls():
  assert loop.chunks(13, 4) == [4, 4, 4, 1]
  assert loop.chunks(7, 8) == [4, 2, 1]
  assert sum(loop.chunks(1000, 64)) == 1000
  assert len(set(n for m in range(1, 200) for n in loop.chunks(m, 64))) <= 7


def test_eval_steps_and_a_target_stop_the_run_where_it_is_reached(mesh1):
  run = _run(mesh1, num_epochs=20)
  target = loop.Target("test_accuracy", 0.0)  # reached at the first evaluation
  h = loop.run_loop(run, eval_steps=[3, 5], target=target)[0]
  assert h.reached == 3 and h.evals["step"] == [3]
  assert len(h.steps["loss"]) == 3 and h.num_epochs == 0


def test_max_steps_stops_inside_an_epoch_and_evaluates_there(mesh1):
  h = loop.run_loop(_run(mesh1), max_steps=2)[0]
  assert len(h.steps["loss"]) == 2 and h.evals["step"] == [2]
  assert int(h.state.step) == 2


def test_a_target_is_compared_in_the_metric_s_own_precision():
  # 900 of 1000 correct is 0.9f = 0.89999998 in float32: that reaches a target of 0.9.
  assert loop.Target("test_accuracy", 0.9).reached(float(np.float32(900) / np.float32(1000)))
  assert not loop.Target("test_accuracy", 0.9).reached(0.899)
  assert loop.Target("train_loss", 0.1).reached(0.1) and loop.Target("train_loss", 0.1).split == "train"


def test_with_eval_steps_the_target_is_checked_only_there(mesh1):
  # The steps-to-target grid: an epoch's end is no extra chance to reach the target.
  run = _run(mesh1, num_epochs=3)  # 7 steps per epoch
  h = loop.run_loop(run, eval_steps=[9], target=loop.Target("test_accuracy", 0.0))[0]
  assert h.reached == 9 and h.evals["step"] == [9]


def test_stopping_at_max_steps_is_no_extra_evaluation_of_the_target(mesh1):
  run = _run(mesh1, num_epochs=3)  # 7 steps per epoch
  target = loop.Target("test_accuracy", 0.0)  # any evaluation reaches it
  h = loop.run_loop(run, eval_steps=[12], target=target, max_steps=10)[0]
  assert h.reached is None and h.evals == {} and len(h.steps["loss"]) == 10


def test_a_run_cut_by_max_steps_alone_is_one_call():
  # A memory trial's few steps run as one program, as compile mode assumes.
  assert loop.chunks(3, 8, binary=False) == [3] and loop.chunks(19, 8, binary=False) == [8, 8, 3]


class _InfiniteAtTrigger(nn.Module):
  """Finite loss everywhere; an infinite gradient (d sqrt(s) / ds at s = 0) only from
  an example whose first pixel is the trigger value."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape((x.shape[0], -1))
    s = self.param("s", nn.initializers.zeros, ())  # other batches leave it at 0
    trigger = x[:, :1] > 100.0
    term = jnp.where(trigger, jnp.sqrt(jnp.where(trigger, s, 1.0)), 0.0)
    return nn.Dense(self.num_classes)(x) + term


@pytest.mark.parametrize("members", [1, 2])
def test_a_gradient_going_non_finite_mid_call_stops_the_run_at_that_step(
    mesh1, monkeypatch, members):
  """The fast step checks only the loss; the call is rerun with every gradient checked,
  so the run stops at the exact step, with the parameters from before it."""
  monkeypatch.setitem(models.MODELS, "mlp", lambda cfg, n, dtype, seq_len: _InfiniteAtTrigger(n))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(96, 4, 4, 1)).astype(np.float32)
  y = rng.integers(0, 10, 96).astype(np.int32)
  x[37, 0, 0, 0] = 200.0  # the trigger
  ds = data.Dataset("trigger", x[:64], y[:64], x[64:], y[64:], 10)
  resolved = [config_lib.resolve(tiny_config(batch_size=8, seed=s, learning_rate=0.1),
                                 n_devices=1, spec=ds.spec()) for s in range(members)]
  run = run_lib.create_run(resolved if members > 1 else resolved[0], ds, mesh1)
  feed = run.order(0)
  state, metrics = run.advance(run.init_state(), feed)
  assert any(checked for _, checked in run._advance)  # the rerun happened
  idx = np.asarray(feed["idx"]).reshape(members, -1, 8)
  for m in range(members):
    bad = int(np.nonzero((idx[m] == 37).any(axis=1))[0][0])
    member = run.program.member(state, m)
    assert int(member.diverged_at) == bad and int(member.step) == bad
    assert np.all(np.isfinite(np.asarray(run.program.member(metrics, m)["loss"])))
    # The parameters are those after the steps before it, run on their own.
    before = pipeline.slice_feed(jax.tree.map(lambda a: a, feed), 0, bad)
    ref, _ = run.advance(run.init_state(), before)
    for a, b in zip(jax.tree.leaves(member.params),
                    jax.tree.leaves(run.program.member(ref, m).params)):
      np.testing.assert_array_equal(a, b)
