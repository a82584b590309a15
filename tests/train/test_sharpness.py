"""Sharpness in training (config.sharpness_batches): the top Hessian eigenvalues of the
training loss at each epoch's end, inside the one loop, against exact Hessians."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import conftest
from sgdlab import config as config_lib, data, trainer
from sgdlab.data import pipeline
from sgdlab.errors import ConfigError
from sgdlab.results import diagnostics
from sgdlab.train import loop, program as program_lib, run as run_lib, step


def sharp_config(**overrides):
  """256 synthetic 4x4 examples, an MLP of 8 (226 parameters), k=32, sharpness on 3
  batches, the top 3 eigenvalues from 40 Lanczos steps."""
  return conftest.tiny_config(**{
      "data.synthetic_n_train": 256, "data.synthetic_input_shape": (4, 4, 1),
      "model.hidden": (8,), "num_epochs": 2, "schedule.name": "constant",
      "sharpness_batches": 3, "sharpness_iterations": 40, "sharpness_top": 3, **overrides})


@pytest.fixture(scope="module")
def sharp(mesh1):
  return trainer.train(sharp_config(), mesh=mesh1)


def _exact(config, params, mesh):
  """eigh of the Hessian of the training loss on the first 3 batches of the sharpness
  permutation, built by hand."""
  resolved = config_lib.resolve(config, n_devices=1)
  program = program_lib.build_program(resolved, mesh)
  ds = data.load(config.data)
  key = jax.random.fold_in(pipeline.sharpness_order_key(config.seed), 0)
  idx = np.asarray(pipeline.batch_order(256, 32, key)["idx"])[:3]
  scale = resolved.spec.scale
  batches = dict(x=pipeline.unit_images(jnp.asarray(ds.x_train[idx]), scale),
                 y=jnp.asarray(ds.y_train[idx]), mask=jnp.ones((3, 32), jnp.float32))
  flat, unravel = ravel_pytree(params)
  loss = lambda f: step.training_loss(program.model, unravel(f), batches)
  hess = np.asarray(jax.hessian(loss)(flat), np.float64)
  g = np.asarray(jax.grad(loss)(flat), np.float64)
  return np.linalg.eigvalsh(hess)[::-1], g @ hess @ g / (g @ g)


def test_sharpness_is_the_top_of_the_exact_spectrum(mesh1, sharp):
  eigs, directional = _exact(sharp_config(), sharp.state.params, mesh1)
  got = [sharp.epochs[f"hessian_eig_{i}"][-1] for i in (1, 2, 3)]
  np.testing.assert_allclose(got, eigs[:3], rtol=1e-2)
  assert sharp.epochs["directional_curvature"][-1] == pytest.approx(directional, rel=1e-3)
  assert len(sharp.epochs["hessian_eig_1"]) == 2 and "epsilon_sharpness" not in sharp.epochs


def test_sharpness_leaves_training_unchanged(mesh1, sharp):
  plain = trainer.train(sharp_config(sharpness_batches=0), mesh=mesh1)
  np.testing.assert_array_equal(sharp.steps["loss"], plain.steps["loss"])
  assert "hessian_eig_1" not in plain.epochs


@pytest.mark.slow
def test_the_same_figures_on_eight_devices_and_for_a_population_member(mesh1, mesh8, sharp):
  eight = trainer.train(sharp_config(), mesh=mesh8)
  for key in ("hessian_eig_1", "directional_curvature"):
    np.testing.assert_allclose(eight.epochs[key], sharp.epochs[key], rtol=2e-3)
  members = [config_lib.resolve(sharp_config(learning_rate=lr, seed=s), n_devices=1)
             for lr, s in ((0.5, 0), (0.2, 1))]
  together = loop.run_loop(run_lib.create_run(members, mesh=mesh1))
  (alone,) = loop.run_loop(run_lib.create_run(members[1], mesh=mesh1))
  np.testing.assert_allclose(together[1].epochs["hessian_eig_1"],
                             alone.epochs["hessian_eig_1"], rtol=1e-4)
  np.testing.assert_allclose(together[0].epochs["hessian_eig_1"],
                             sharp.epochs["hessian_eig_1"], rtol=1e-4)


def test_epsilon_sharpness_and_the_stability_note(mesh1):
  h = trainer.train(sharp_config(sharpness_epsilon=1e-2, num_epochs=1), mesh=mesh1)
  assert h.epochs["epsilon_sharpness"][0] > 0
  product = h.epochs["hessian_eig_1"][0] * h.epochs["lr"][0]
  assert any(f"lr x lambda_max peaked at {product:.3g} (epoch 1)" in n for n in h.diagnostics)


def test_stability_thresholds_and_notes():
  assert diagnostics.stability_threshold("sgd", 0.9) == 2.0
  assert diagnostics.stability_threshold("momentum", 0.9) == pytest.approx(3.8)
  assert diagnostics.stability_threshold("nesterov", 0.5) == pytest.approx(1.5)
  assert diagnostics.stability_threshold("adam", 0.9) is None
  note = diagnostics.stability_note(dict(hessian_eig_1=[1.0, 30.0, 15.0],
                                         lr=[0.1, 0.1, 0.1]), 2.0)
  assert note == ("lr x lambda_max peaked at 3 (epoch 2), above 2 in epoch 2: unstable "
                  "along the sharpest direction")
  assert diagnostics.stability_note(dict(lr=[0.1]), 2.0) is None
  many = diagnostics.stability_note(dict(hessian_eig_1=[30.0] * 5 + [1.0, 30.0, 30.0, 1.0, 30.0],
                                         lr=[0.1] * 10), 2.0)
  assert "above 2 in epochs 1-5, 7, 8, 10:" in many


@pytest.mark.parametrize("overrides,field,valid", [
    (dict(sharpness_batches=-1), "sharpness_batches", "an integer >= 0"),
    (dict(sharpness_batches=9), "sharpness_batches", "at most the 8 full batches of k=32"),
    (dict(batch_size="auto"), "sharpness_batches", "0 with batch_size='auto'"),
    (dict(sharpness_iterations=0), "sharpness_iterations", "an integer >= 1"),
    (dict(sharpness_top=41), "sharpness_top", "an integer in [1, sharpness_iterations=40]"),
    (dict(sharpness_epsilon=-1.0), "sharpness_epsilon", "a number >= 0"),
])
def test_bad_sharpness_settings_are_named(overrides, field, valid):
  with pytest.raises(ConfigError) as e:
    config_lib.resolve(sharp_config(**overrides), n_devices=1)
  assert e.value.field == field and valid in e.value.valid, str(e.value)


def test_sharpness_reaches_the_summary_and_tensorboard_tags(sharp):
  from sgdlab.results import summary, tensorboard
  header, _, row = summary.table([sharp]).splitlines()[:3]
  names = [c.strip() for c in header.strip("|").split("|")]
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert float(cells[names.index("lambda_max")]) == pytest.approx(
      sharp.epochs["hessian_eig_1"][-1], rel=1e-3)
  assert tensorboard.epoch_tag("hessian_eig_1") == "curvature/lambda_max"
  assert tensorboard.epoch_tag("hessian_eig_3") == "curvature/lambda_3"
  assert "lambda_max" not in summary.table([trainer.train(sharp_config(sharpness_batches=0,
                                                                        num_epochs=1))])


def test_a_run_with_sharpness_resumes_bitwise(mesh1, tmp_path):
  import os
  import shutil
  from test_resume import assert_same_run
  config = sharp_config(num_epochs=3, checkpoint_every_epochs=1)
  ckpt = str(tmp_path / "ckpt")
  full = trainer.train(config, mesh=mesh1, checkpoint_dir=ckpt)
  shutil.rmtree(os.path.join(ckpt, "3"))  # as if killed during epoch 3
  resumed = trainer.train(config, mesh=mesh1, checkpoint_dir=ckpt)
  assert_same_run(full, resumed)
  assert len(resumed.epochs["hessian_eig_1"]) == 3


def test_sharpness_every_n_epochs_and_after_the_last(mesh1):
  h = trainer.train(sharp_config(num_epochs=5, sharpness_every_epochs=2, sharpness_top=2),
                    mesh=mesh1)
  measured = [bool(np.isfinite(v)) for v in h.epochs["hessian_eig_1"]]
  assert measured == [False, True, False, True, True]
  assert [bool(np.isfinite(v)) for v in h.epochs["hessian_eig_2"]] == measured
  assert any("lr x lambda_max peaked" in n for n in h.diagnostics)
