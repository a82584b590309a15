"""CIFAR's crop and flip on device: one draw per (seed, epoch, example), whatever the
device count, micro-batching or pipeline; training only."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest
from sgdlab import config as config_lib, data
from sgdlab.data import augment, pipeline
from sgdlab.errors import ConfigError
from sgdlab import trainer
from sgdlab.train import program as program_lib, run as run_lib
from test_cifar import write_cifar

N, SIDE = 256, 32


def _positions() -> data.Dataset:
  """Images whose pixels say where they are: (row + 1, col + 1, example index)."""
  rows = np.broadcast_to(np.arange(1, SIDE + 1)[:, None], (SIDE, SIDE))
  x = np.empty((N, SIDE, SIDE, 3), np.uint8)
  x[..., 0], x[..., 1] = rows, rows.T
  x[..., 2] = np.arange(N, dtype=np.uint8)[:, None, None]
  y = (np.arange(N) % 10).astype(np.int32)
  return data.Dataset("cifar10", x, y, x[:64], y[:64], 10, 255.0)


def _decode(x: np.ndarray) -> tuple[np.ndarray, ...]:
  """(index, row offset, col offset, flipped) of augmented images [..., 32, 32, 3]."""
  centre, right = x[..., 16, 16, :].astype(int), x[..., 16, 17, :].astype(int)
  flipped = right[..., 1] < centre[..., 1]
  # Unflipped, pixel (16, 16) is (16 + row - 4, 16 + col - 4); flipped, its column is 15.
  return centre[..., 2], centre[..., 0] - 13, centre[..., 1] - 13 + flipped, flipped


def _seen(mesh, epochs: int, **overrides) -> dict[int, np.ndarray]:
  """Per epoch, each example's (row, col, flip) as the train step received it."""
  ds = _positions()
  config = conftest.tiny_config(**{"data.augment": "crop_flip", "batch_size": 64, **overrides})
  program = program_lib.build_program(config_lib.resolve(config, n_devices=mesh.size,
                                                     spec=ds.spec()), mesh)
  record = lambda state, batch: (state, dict(x=batch["x"]))  # noqa: E731
  program = dataclasses.replace(program, train_step=record)
  x, y, keys = pipeline.replicate((ds.x_train, ds.y_train, program.data_keys()), mesh)
  state = pipeline.replicate(program.init_state(), mesh)
  order, advance = program.order_fn(), program.advance_fn()
  out = {}
  for epoch in range(epochs):
    feed = order(keys, jnp.int32(epoch))
    _, steps, _ = advance(state, x, y, feed)
    index, row, col, flip = _decode(np.asarray(steps["x"]))
    np.testing.assert_array_equal(index, np.asarray(feed["idx"]))  # each image its own
    draw = np.asarray(feed["draw"])
    np.testing.assert_array_equal(flip, draw >= 81)
    np.testing.assert_array_equal(row * 9 + col, draw % 81)
    seen = np.zeros((N, 3), int)
    seen[index.reshape(-1)] = np.stack([row, col, flip], -1).reshape(-1, 3)
    out[epoch] = seen
  return out


def test_crops_and_flips_are_drawn_per_example_and_epoch_the_same_on_1_and_8_devices(
    mesh1, mesh8):
  one, eight = _seen(mesh1, 4), _seen(mesh8, 4)
  for epoch in one:
    np.testing.assert_array_equal(one[epoch], eight[epoch])
  every = np.concatenate(list(one.values()))
  assert abs(every[:, 2].mean() - 0.5) < 0.06  # about half flipped
  offsets = set(map(tuple, every[:, :2]))
  assert offsets == {(r, c) for r in range(9) for c in range(9)}  # all 81 crops
  for a, b in ((0, 1), (1, 2), (2, 3)):  # a fresh draw every epoch
    assert np.mean(np.all(one[a] == one[b], axis=1)) < 0.05


def test_crop_flip_is_a_zero_padded_crop_then_a_mirror():
  image = np.random.default_rng(0).integers(1, 256, (1, 6, 5, 2), dtype=np.uint8)
  draws = np.arange(augment.DRAWS, dtype=np.int32)
  got = np.asarray(jax.jit(augment.crop_flip)(np.repeat(image, len(draws), 0), draws))
  padded = np.pad(image[0], ((4, 4), (4, 4), (0, 0)))
  for d in draws:
    r, c = divmod(d % 81, 9)
    want = padded[r:r + 6, c:c + 5]
    np.testing.assert_array_equal(got[d], want[:, ::-1] if d >= 81 else want)


def test_draws_follow_the_example_not_its_position():
  key = pipeline.data_order_key(3)
  idx = jnp.arange(100, dtype=jnp.int32)
  perm = jnp.asarray(np.random.default_rng(0).permutation(100), jnp.int32)
  a, b = augment.draws(key, 2, idx), augment.draws(key, 2, perm.reshape(10, 10))
  np.testing.assert_array_equal(np.asarray(a)[np.asarray(perm)].reshape(10, 10), b)
  assert 0 <= int(a.min()) and int(a.max()) < augment.DRAWS
  other_seed = augment.draws(pipeline.data_order_key(4), 2, idx)
  assert np.mean(np.asarray(a) == np.asarray(other_seed)) < 0.05


def test_evaluation_is_never_augmented(mesh1):
  ds = _positions()
  config = conftest.tiny_config(**{"data.augment": "crop_flip", "batch_size": 64})
  program = program_lib.build_program(config_lib.resolve(config, n_devices=1, spec=ds.spec()),
                                  mesh1)
  add = lambda params, b: dict(  # noqa: E731
      loss_sum=jnp.sum(b["x"].astype(jnp.float32) * b["mask"][:, None, None, None]),
      correct=jnp.float32(0), count=jnp.sum(b["mask"]))
  program = dataclasses.replace(program, eval_step=add)
  x, y = pipeline.replicate((ds.x_test, ds.y_test), mesh1)
  got = program.evaluate_fn()(None, x, y)
  want = ds.x_test.astype(np.float64).mean() * np.prod(ds.input_shape)
  np.testing.assert_allclose(float(got["loss"]), want, rtol=1e-4)  # a crop would lose ~25%


# ----------------------------------------------------------------- through runs


def _cifar_run(folder, **overrides):
  return conftest.tiny_config(**{"data.name": "cifar10", "data.dir": str(folder),
                                 "batch_size": 8, "num_epochs": 2, "learning_rate": 0.05,
                                 **overrides})


def test_micro_batching_sees_the_same_augmented_examples(tmp_path, mesh1):
  write_cifar(tmp_path)
  whole = trainer.train(_cifar_run(tmp_path), mesh=mesh1)
  micro = trainer.train(_cifar_run(tmp_path, microbatch_size=2), mesh=mesh1)
  for a, b in zip(jax.tree.leaves(whole.state.params), jax.tree.leaves(micro.state.params),
                  strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)
  resolved = config_lib.resolve(_cifar_run(tmp_path), n_devices=1)
  assert program_lib.build_program(resolved, mesh1).augmented  # CIFAR's default: crop_flip


def test_the_grain_pipeline_augments_as_the_device_pipeline_does(tmp_path, mesh1):
  write_cifar(tmp_path / "cifar")
  device = trainer.train(_cifar_run(tmp_path / "cifar"), mesh=mesh1)
  grain = trainer.train(_cifar_run(tmp_path / "cifar", **{"data.pipeline": "grain",
                                                      "data.cache_dir": str(tmp_path)}),
                    mesh=mesh1)
  for a, b in zip(jax.tree.leaves(device.state), jax.tree.leaves(grain.state), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert grain.steps["loss"] == device.steps["loss"]
  assert grain.epochs["test_loss"] == device.epochs["test_loss"]


# ---------------------------------------------------------------------- config


@pytest.mark.parametrize("name,shape,want", [("cifar10", (32, 32, 3), "crop_flip"),
                                             ("cifar100", (32, 32, 3), "crop_flip"),
                                             ("mnist", (28, 28, 1), "none"),
                                             ("synthetic", (6, 5), "none")])
def test_auto_augments_cifar_only(name, shape, want):
  cfg = data.default_config()
  cfg.name = name
  assert augment.mode(cfg, shape) == want


@pytest.mark.parametrize("value,shape", [("flip", (32, 32, 3)), ("crop_flip", (6, 5))])
def test_bad_augment_is_a_config_error(value, shape):
  cfg = data.default_config()
  cfg.name, cfg.augment = "synthetic", value
  cfg.synthetic_input_shape = shape
  with pytest.raises(ConfigError) as e:
    data.describe(cfg)
  assert e.value.field == "data.augment"
