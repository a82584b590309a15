"""The ImageNet ResNets v1.5 (models/resnet_imagenet.py) and config.label_smoothing:
torchvision's parameter counts, blocks that start as relu(shortcut), the bottleneck's
stride in its 3x3, training through the library, and the smoothed training loss."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import conftest
from sgdlab import config as config_lib, models, trainer
from sgdlab.errors import ConfigError
from sgdlab.models.resnet_imagenet import STAGES, ImageNetResNet
from sgdlab.train import program as program_lib, step

# torchvision.models.resnet{18,34,50,101}(num_classes=1000): parameters (not buffers).
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160}


def _config(**overrides):
  """ResNet-50 at width 8 on 16 synthetic 32x32x3 images of 10 classes, k=4."""
  return conftest.tiny_config(**{
      "model.name": "imagenet_resnet", "model.imagenet_width": 8,
      "data.synthetic_input_shape": (32, 32, 3), "data.synthetic_n_train": 16,
      "data.synthetic_n_test": 8, "batch_size": 4, "drop_remainder": True,
      "optimizer.name": "momentum", "learning_rate": 0.05,
      "model.conv_impl": "xla", **overrides})  # xla: compiles fastest


def _images(k=4, side=32, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (k, side, side, 3))


def _batch(k=4, side=32, seed=0):
  return dict(x=np.asarray(_images(k, side, seed)), y=(np.arange(k) % 10).astype(np.int32),
              mask=np.ones(k, np.float32))


def _one_step(config, mesh):
  """(loss, new state, old state) of one train step of `config` on `_batch`."""
  resolved = config_lib.resolve(config, n_devices=mesh.size)
  program = program_lib.build_program(resolved, mesh)
  state = program.init_state()
  new, metrics = jax.jit(program.train_step)(state, _batch(resolved.batch_size))
  return float(metrics["loss"]), new, state


@pytest.mark.parametrize("depth", sorted(TORCHVISION_PARAMS))
def test_parameter_counts_are_torchvisions(depth):
  model = ImageNetResNet(depth=depth, num_classes=1000, conv_impl="xla")
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
  assert sum(math.prod(a.shape) for a in jax.tree.leaves(shapes["params"])) == (
      TORCHVISION_PARAMS[depth])


def test_the_stages_halve_the_resolution_as_in_he_et_al():
  """224 -> 112 (stem) -> 56 (pool) -> 56, 28, 14, 7; 2048 features into the dense layer."""
  model = ImageNetResNet(depth=50, width=64, conv_impl="xla")
  x = jnp.zeros((1, 224, 224, 3))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  _, state = jax.eval_shape(lambda v: model.apply(v, x, capture_intermediates=True,
                                                  mutable=["intermediates"]), variables)
  out = state["intermediates"]
  assert out["stem"]["__call__"][0].shape == (1, 112, 112, 64)
  for stage, (side, ch) in enumerate([(56, 256), (28, 512), (14, 1024), (7, 2048)]):
    assert out[f"stage{stage}_block0"]["__call__"][0].shape == (1, side, side, ch)
  assert variables["params"]["logits"]["kernel"].shape == (2048, 1000)


@functools.lru_cache(maxsize=None)
def _at_init(depth: int):
  """(params, intermediates) of ResNet-`depth` at width 8 on 2 images in training mode,
  in one compiled program (eager init and apply take 3x longer on CPU)."""
  model = ImageNetResNet(depth=depth, width=8, num_classes=10, conv_impl="xla")

  def run(x):
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    _, state = model.apply({"params": params}, x, train=True, capture_intermediates=True,
                           mutable=["batch_moments", "intermediates"])
    return params, state["intermediates"]

  return jax.jit(run)(_images(k=2))


@pytest.mark.parametrize("depth", [pytest.param(18, marks=pytest.mark.slow), 50])
def test_every_block_starts_as_relu_of_its_shortcut(depth):
  """Goyal et al.'s zero-initialized last batch-norm scale: at init each residual branch
  is exactly 0, so a block's output is relu(x) or relu(projection shortcut)."""
  _, out = _at_init(depth)
  stem = jax.nn.relu(out["stem_bn"]["__call__"][0])
  block_in = jax.lax.reduce_window(stem, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                   ((0, 0), (1, 1), (1, 1), (0, 0)))
  checked = 0
  for stage, n in enumerate(STAGES[depth][1]):
    for b in range(n):
      block = out[f"stage{stage}_block{b}"]
      shortcut = block["shortcut_bn"]["__call__"][0] if "shortcut_bn" in block else block_in
      block_out = block["__call__"][0]
      np.testing.assert_array_equal(block_out, jax.nn.relu(shortcut))
      assert float(jnp.max(block_out)) > 0  # not all zero: the shortcut carries the signal
      block_in, checked = block_out, checked + 1
  assert checked == sum(STAGES[depth][1])


def test_the_bottleneck_strides_in_its_3x3_convolution():
  """v1.5: in the first block of stages 2-4 the first 1x1 keeps the resolution and the
  3x3 halves it (He et al.'s v1 strided the 1x1)."""
  params, out = _at_init(50)
  for stage, side in ((1, 8), (2, 4), (3, 2)):  # input side of the stage's first block
    name, inner = f"stage{stage}_block0", 8 * 2 ** stage
    block, p = out[name], params[name]
    assert block["conv0"]["__call__"][0].shape == (2, side, side, inner)
    assert block["conv1"]["__call__"][0].shape == (2, side // 2, side // 2, inner)
    assert block["conv2"]["__call__"][0].shape == (2, side // 2, side // 2, 4 * inner)
    assert p["conv0"]["kernel"].shape == (1, 1, 2 * inner, inner)
    assert p["conv1"]["kernel"].shape == (3, 3, inner, inner)
    assert p["conv2"]["kernel"].shape == (1, 1, inner, 4 * inner)
    assert p["shortcut"]["kernel"].shape == (1, 1, 2 * inner, 4 * inner)
  assert "shortcut" in params["stage0_block0"]  # 8 -> 32 channels
  assert "shortcut" not in params["stage0_block1"]


def test_a_small_resnet50_trains_through_the_library(mesh1):
  history = trainer.train(_config(num_epochs=4), mesh=mesh1)
  losses = history.epochs["train_loss"]
  assert not history.diverged and np.all(np.isfinite(history.steps["loss"]))
  assert len(history.steps["loss"]) == 16  # 4 epochs of 16 / 4 steps
  assert losses[-1] < losses[0] - 0.1, losses
  assert np.isfinite(history.epochs["test_loss"]).all()


@pytest.mark.slow  # bfloat16 and remat on the other models: test_precision_remat.py
@pytest.mark.parametrize("depth", [18, 50])
def test_bfloat16_with_remat_trains_a_step_to_a_finite_loss(mesh1, depth):
  """(bfloat16 against float32, and remat's gradients: tests/models/test_precision_remat.py.)"""
  loss, new, _ = _one_step(_config(dtype="bfloat16", **{"model.remat": True,
                                                        "model.imagenet_depth": depth}), mesh1)
  assert np.isfinite(loss) and abs(loss - math.log(10)) < 1.0, loss
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(new.params))
  assert int(new.step) == 1 and step.all_finite(new.params)


@pytest.mark.slow  # "device" trains in every test above; the modes: test_batchnorm.py
@pytest.mark.parametrize("mode,extra", [
    ("device", {}), ("virtual", {"model.bn_virtual_batch_size": 2}), ("sync", {})])
def test_each_bn_mode_builds_and_trains_a_step_on_two_devices(mode, extra):
  mesh2 = step.make_mesh(jax.devices()[:2])
  config = _config(batch_size=8, **{"model.imagenet_depth": 18, "model.bn_mode": mode,
                                    **extra})
  loss, new, old = _one_step(config, mesh2)
  assert np.isfinite(loss) and int(new.step) == 1
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new.batch_stats),
                                                      jax.tree.leaves(old.batch_stats))]
  assert all(moved)
  if mode == "sync":  # statistics of the whole batch: one device holding all of it
    alone, _, _ = _one_step(_config(batch_size=8, **{"model.imagenet_depth": 18}),
                            step.make_mesh(jax.devices()[:1]))
    np.testing.assert_allclose(loss, alone, rtol=1e-5)


@pytest.mark.slow
def test_the_full_width_resnet50_trains_a_step_on_64x64_images(mesh1):
  loss, new, _ = _one_step(_config(batch_size=2, **{
      "model.imagenet_width": 64, "data.synthetic_input_shape": (64, 64, 3)}), mesh1)
  assert np.isfinite(loss) and int(new.step) == 1
  assert abs(loss - math.log(10)) < 1.0


@pytest.mark.parametrize("overrides,field", [
    ({"model.imagenet_depth": 42}, "model.imagenet_depth"),
    ({"model.imagenet_depth": 0}, "model.imagenet_depth"),
    ({"model.imagenet_width": 0}, "model.imagenet_width"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"label_smoothing": -0.1}, "label_smoothing"),
    ({"label_smoothing": float("nan")}, "label_smoothing"),
    ({"drop_remainder": False, "batch_size": 3}, "drop_remainder"),  # batch norm model
])
def test_bad_fields_name_the_field(overrides, field):
  with pytest.raises(ConfigError, match=r"config\." + field.replace(".", r"\.") + "=") as e:
    config_lib.resolve(_config(**overrides), n_devices=1)
  assert e.value.field == field


def test_the_depth_error_lists_the_depths():
  with pytest.raises(ConfigError, match=r"one of \[18, 34, 50, 101\]"):
    config_lib.resolve(_config(**{"model.imagenet_depth": 42}), n_devices=1)


@pytest.mark.parametrize("shape,classes", [((6,), 10), ((3, 5), 256)])  # images; windows
def test_smoothed_loss_is_the_hand_computed_mixture(shape, classes):
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(*shape, classes)) * 3, jnp.float32)
  y = jnp.asarray(rng.integers(0, classes, shape), jnp.int32)
  mask = jnp.asarray([1.0] * (shape[0] - 1) + [0.0])
  eps, logp = 0.1, jax.nn.log_softmax(logits)
  ce = -jnp.take_along_axis(logp, y[..., None], -1)[..., 0]
  hand = (1 - eps) * ce + eps * jnp.mean(-logp, -1)
  m = mask.reshape(mask.shape + (1,) * (len(shape) - 1))
  losses, correct = step._losses(logits, y, mask, eps)
  np.testing.assert_allclose(losses, hand * m, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(correct, (jnp.argmax(logits, -1) == y) * m)
  plain, _ = step._losses(logits, y, mask, 0.0)
  np.testing.assert_array_equal(plain, optax.softmax_cross_entropy_with_integer_labels(
      logits, y) * m)
  assert np.all(np.asarray(losses - plain)[:-1] != 0)  # smoothing changes every loss


def _mlp_program(mesh, label_smoothing):
  config = conftest.tiny_config(label_smoothing=label_smoothing)
  return program_lib.build_program(config_lib.resolve(config, n_devices=1), mesh)


def test_the_train_step_minimizes_the_smoothed_loss_and_evaluates_the_plain_one(mesh1):
  program = _mlp_program(mesh1, 0.1)
  state, batch = program.init_state(), _batch(k=8, side=8)
  batch["x"] = batch["x"][..., :1]
  _, metrics = jax.jit(program.train_step)(state, batch)
  logits = program.model.apply({"params": state.params}, batch["x"])
  logp = jax.nn.log_softmax(logits)
  ce = -logp[jnp.arange(8), batch["y"]]
  np.testing.assert_allclose(metrics["loss"], jnp.mean(0.9 * ce + 0.1 * jnp.mean(-logp, -1)),
                             rtol=1e-5)
  sums = jax.jit(program.eval_step)(step.eval_variables(state), batch)
  np.testing.assert_allclose(sums["loss_sum"] / sums["count"], jnp.mean(ce), rtol=1e-5)


def test_no_smoothing_is_bitwise_the_step_without_it(mesh1):
  """label_smoothing=0: the program's step equals a step built without the argument."""
  program = _mlp_program(mesh1, 0.0)
  state, batch = program.init_state(), _batch(k=8, side=8)
  batch["x"] = batch["x"][..., :1]
  old = step.make_train_step(program.model, program.tx, program.lr_fn, mesh1)
  new_state, metrics = jax.jit(program.checked_step)(state, batch)
  old_state, old_metrics = jax.jit(old)(state, batch)
  for a, b in zip(jax.tree.leaves((new_state, metrics)), jax.tree.leaves((old_state,
                                                                           old_metrics))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
