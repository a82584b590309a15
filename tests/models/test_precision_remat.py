"""config.dtype and model.remat: what the compiled programs really do."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from sgdlab import config as config_lib, models
from sgdlab.train import program as program_lib, run as run_lib, step
from sgdlab import optim

LR_FN = lambda count, lr, decay: lr / (1.0 + decay * count)
# Image models; the language model's precision and remat: tests/models/test_transformer.py.
IMAGE_MODELS = sorted(set(models.MODELS) - set(models.SEQUENCE_MODELS))
# The ImageNet ResNet at its smallest (its own tests: tests/models/test_resnet_imagenet.py).
SMALL = {"imagenet_resnet": {"model.imagenet_depth": 18, "model.imagenet_width": 8}}
SLOW = ("resnet", "imagenet_resnet")


def _batch(shape, k=16, seed=0):
  rng = np.random.default_rng(seed)
  return dict(x=rng.normal(size=(k, *shape)).astype(np.float32),
              y=(np.arange(k) % 10).astype(np.int32), mask=np.ones(k, np.float32))


def _cnn(dtype="float32", remat=False):
  return models.CNN(features=(8, 16), dense=32, dropout=0.0, dense_dropout=0.0,
                    dtype=jnp.dtype(dtype), remat=remat)


def _operand_dtypes(text, op):
  """Operand dtypes of each `op` in StableHLO text, e.g. [('bf16', 'bf16'), ...]. Dots at
  HIGHEST precision are left out: they are the finiteness check on float32 gradients."""
  found = []
  for line in text.splitlines():
    if f"stablehlo.{op}" in line and "HIGHEST" not in line:
      operands = line.split(": (")[-1].split(") ->")[0]
      found.append(tuple(re.findall(r"x(bf16|f32)>", operands)))
  return found


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW
                                  else n for n in IMAGE_MODELS])
def test_bfloat16_computes_in_bfloat16_and_keeps_float32_parameters(name, mesh1):
  results = {}
  for dtype in ("float32", "bfloat16"):
    resolved = config_lib.resolve(tiny_config(dtype=dtype, drop_remainder=True,
                                              **{"model.name": name,
                                                 "model.conv_dropout": 0.0,
                                                 "model.dense_dropout": 0.0,
                                                 **SMALL.get(name, {})}),
                                  n_devices=1)
    program = program_lib.build_program(resolved, mesh1)
    state, batch = program.init_state(), _batch((8, 8, 1))
    train_step = jax.jit(program.train_step)
    text = train_step.lower(state, batch).as_text()
    # The program XLA is given: every matmul and convolution of the model, forward and
    # backward, on operands of the compute dtype. (XLA:CPU then upcasts bf16 dots to f32
    # after rounding, so its compiled text shows f32: the GPU keeps them bf16.)
    dots, convs = _operand_dtypes(text, "dot_general"), _operand_dtypes(text, "convolution")
    want = "bf16" if dtype == "bfloat16" else "f32"
    assert dots and all(set(d) == {want} for d in dots), dots
    assert (len(convs) > 0) == (name in ("cnn", "resnet", "imagenet_resnet"))
    assert all(set(c) == {want} for c in convs), convs
    new_state, metrics = train_step(state, batch)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(new_state.params))
    assert metrics["loss"].dtype == jnp.float32
    results[dtype] = float(metrics["loss"])
  assert results["bfloat16"] != results["float32"]
  assert abs(results["bfloat16"] - results["float32"]) < 1e-2


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW
                                  else n for n in IMAGE_MODELS])
def test_remat_gives_the_same_gradients(name, mesh1):
  grads = []
  for remat in (False, True):
    config = tiny_config(drop_remainder=True, **{"model.name": name, "model.remat": remat,
                            "model.conv_dropout": 0.0, "model.dense_dropout": 0.0,
                            **SMALL.get(name, {})})
    program = program_lib.build_program(config_lib.resolve(config, n_devices=1), mesh1)
    params = program.init_state().params
    grads.append(jax.jit(step.make_grad_fn(program.model, mesh1))(params, _batch((8, 8, 1))))
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_remat_needs_fewer_temp_bytes_in_a_deep_model(mesh1):
  temps = []
  for remat in (False, True):
    model = models.MLP(hidden=(256,) * 8, remat=remat)
    tx = optim.scale_by_lr()
    state = step.init_state(model, tx, (8, 8, 1), seed=0, learning_rate=0.1, lr_decay=0.0)
    compiled = jax.jit(step.make_train_step(model, tx, LR_FN, mesh1)).lower(
        state, _batch((8, 8, 1), k=512)).compile()
    temps.append(compiled.memory_analysis().temp_size_in_bytes)
  assert temps[1] <= 0.7 * temps[0], temps
