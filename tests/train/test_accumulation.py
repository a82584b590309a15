"""Gradient accumulation: micro-batches inside the step give one big step's update."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import tiny_config
from sgdlab import config as config_lib, models
from sgdlab.errors import ConfigError
from sgdlab import trainer
from sgdlab.train import step
from sgdlab import optim

MODEL = models.MLP(hidden=(16, 16), num_classes=10)
LR_FN = lambda count, lr, decay: lr / (1.0 + decay * count)


def _two_steps(mesh, accumulation, mask, noise_scale=False, noise_groups=0, tx=None):
  rng = np.random.default_rng(0)
  batch = dict(x=rng.normal(size=(64, 6, 6, 1)).astype(np.float32),
               y=rng.integers(0, 10, 64).astype(np.int32), mask=mask)
  batch = jax.device_put(batch, NamedSharding(mesh, P(step.DATA)))
  tx = tx or optax.chain(optax.trace(0.9), optim.scale_by_lr())  # momentum: the update depends on the accumulated gradient twice
  state = step.init_state(MODEL, tx, (6, 6, 1), seed=0, learning_rate=0.5, lr_decay=1e-2)
  train_step = jax.jit(step.make_train_step(MODEL, tx, LR_FN, mesh, noise_scale=noise_scale,
                                            accumulation_steps=accumulation,
                                            noise_groups=noise_groups))
  state, _ = train_step(state, batch)
  return train_step(state, batch)


@pytest.mark.parametrize("n_devices", [1, 8])
@pytest.mark.parametrize("partial", [False, True])
def test_four_micro_batches_give_the_update_of_one_step_at_full_k(n_devices, partial,
                                                                   mesh1, mesh8):
  mesh = mesh1 if n_devices == 1 else mesh8
  mask = np.ones(64, np.float32)
  if partial:
    mask[41:] = 0.0  # a masked last batch: whole micro-batches of padding, and a split one
  one, one_metrics = _two_steps(mesh, 1, mask)
  acc, acc_metrics = _two_steps(mesh, 4, mask)
  assert int(acc.step) == int(one.step) == 2  # optimizer updates, not micro-steps
  for a, b in zip(jax.tree.leaves(acc.params), jax.tree.leaves(one.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(acc_metrics["loss"], one_metrics["loss"], rtol=1e-6)
  assert float(acc_metrics["count"]) == float(mask.sum())
  np.testing.assert_allclose(acc_metrics["lr"], 0.5 / (1 + 1e-2 * 1), rtol=1e-7)


def test_accumulation_with_adam_gives_the_update_of_one_step_at_full_k(mesh1):
  """Adam's moments see the mean gradient once per update, accumulated or not."""
  cfg = optim.optimizer_config()
  cfg.name = "adam"
  mask = np.ones(64, np.float32)
  one, _ = _two_steps(mesh1, 1, mask, tx=optim.optimizer(cfg))
  acc, _ = _two_steps(mesh1, 4, mask, tx=optim.optimizer(cfg))
  for a, b in zip(jax.tree.leaves((acc.params, acc.opt_state)),
                  jax.tree.leaves((one.params, one.opt_state))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n_devices", [1, 8])
def test_the_micro_batches_are_the_noise_scales_small_batches(n_devices, mesh1, mesh8):
  mesh = mesh1 if n_devices == 1 else mesh8
  _, metrics = _two_steps(mesh, 4, np.ones(64, np.float32), noise_scale=True)
  _, plain = _two_steps(mesh, 1, np.ones(64, np.float32), noise_scale=True)
  assert float(metrics["b_small"]) == 64 // n_devices // 4 and float(metrics["b_big"]) == 64
  np.testing.assert_allclose(metrics["g_big_sq"], plain["g_big_sq"], rtol=1e-5)
  # Smaller batches, noisier gradients: E|G_b|^2 = |G|^2 + tr(Sigma) / b.
  assert float(metrics["g_small_sq"]) > float(plain["g_small_sq"])


def test_noise_groups_split_each_micro_batch(mesh1):
  # 4 micro-batches of 16, each in 2 groups: the same 8 contiguous small batches of 8 as
  # one step split into 8 groups, and the same update.
  ones = np.ones(64, np.float32)
  acc_state, acc = _two_steps(mesh1, 4, ones, noise_scale=True, noise_groups=2)
  one_state, one = _two_steps(mesh1, 1, ones, noise_scale=True, noise_groups=8)
  assert float(acc["b_small"]) == float(one["b_small"]) == 8
  np.testing.assert_allclose(acc["g_small_sq"], one["g_small_sq"], rtol=1e-5)
  np.testing.assert_allclose(acc["g_big_sq"], one["g_big_sq"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(acc_state.params), jax.tree.leaves(one_state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_run_with_accumulation_counts_updates_and_matches_one_without(mesh1):
  plain = trainer.train(tiny_config(), mesh=mesh1)
  acc = trainer.train(tiny_config(microbatch_size=8), mesh=mesh1)  # k=32: 4 micro-steps
  steps = 3 * 7  # ceil(200 / 32) updates per epoch, the last one partial
  assert int(acc.state.step) == int(plain.state.step) == steps
  np.testing.assert_array_equal(acc.steps["lr"], plain.steps["lr"])
  np.testing.assert_allclose(acc.steps["lr"][-1], 0.5 / (1 + 1e-3 * (steps - 1)), rtol=1e-6)
  np.testing.assert_allclose(acc.epochs["test_loss"], plain.epochs["test_loss"], rtol=1e-4)


@pytest.mark.parametrize("overrides,field,valid", [
    (dict(microbatch_size=12), "microbatch_size", "a divisor of the per-device batch 32"),
    (dict(microbatch_size=64), "microbatch_size", "a divisor of the per-device batch 32"),
    (dict(microbatch_size=-1), "microbatch_size", "an integer >= 0"),
    (dict(dtype="float16"), "dtype", "one of ['float32', 'bfloat16', 'auto']"),
    (dict(batch_size="auto", microbatch_size="auto"), "microbatch_size", 'batch_size="auto"'),
    (dict(batch_size="auto", dtype="auto"), "dtype", 'batch_size="auto"'),
    (dict(noise_scale=True, noise_groups=-1), "noise_groups", "an integer >= 0"),
    (dict(noise_scale=True, noise_groups=3), "noise_groups", "a divisor of the 32 examples"),
    (dict(noise_scale=True, noise_groups=3, microbatch_size=8), "noise_groups",
     "a divisor of the 8 examples each device computes at once (k=32 over 1 device(s), "
     "per micro-batch), e.g. 2"),
])
def test_bad_accumulation_and_precision_fields_are_named(overrides, field, valid):
  with pytest.raises(ConfigError) as e:
    config_lib.resolve(tiny_config(**overrides), n_devices=1)
  assert e.value.field == field and valid in e.value.valid, str(e.value)


def test_the_micro_batch_divides_each_devices_share(mesh8):
  with pytest.raises(ConfigError, match=r"per-device batch 4 \(k=32 over 8"):
    config_lib.resolve(tiny_config(microbatch_size=8), n_devices=8)
  assert config_lib.resolve(tiny_config(microbatch_size=2), n_devices=8).accumulation_steps == 2


def test_auto_fields_take_a_number_or_auto_after_references_are_resolved():
  # Experiments copy configs with copy_and_resolve_references, which drops the fields'
  # object type: the planner's "auto" -> number must still be settable.
  config = tiny_config(microbatch_size="auto").copy_and_resolve_references()
  config_lib.set_field(config, "microbatch_size", 8)
  config_lib.set_field(config, "batch_size", "auto")
  assert config.microbatch_size == 8 and config.batch_size == "auto"
