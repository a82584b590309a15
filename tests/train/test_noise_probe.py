"""The noise probe (config.noise_probe_batches): B_simple at each epoch's end from extra
batches at that epoch's final parameters, inside the one loop."""

import jax
import numpy as np
import pytest

import conftest
from sgdlab import config as config_lib, data, noise
from sgdlab.data import pipeline
from sgdlab.errors import ConfigError
from sgdlab import trainer
from sgdlab.train import loop, program as program_lib, run as run_lib


def probe_config(**overrides):
  """256 synthetic examples, k=32 (8 full batches an epoch), the probe on all 8."""
  return conftest.tiny_config(**{"data.synthetic_n_train": 256, "num_epochs": 2,
                                 "noise_scale": True, "noise_probe_batches": 8, **overrides})


@pytest.fixture(scope="module")
def probed(mesh1):
  return trainer.train(probe_config(), mesh=mesh1)


def test_the_probe_leaves_training_unchanged(mesh1, probed):
  plain = trainer.train(probe_config(noise_probe_batches=0), mesh=mesh1)
  np.testing.assert_array_equal(probed.steps["loss"], plain.steps["loss"])
  for a, b in zip(jax.tree.leaves(probed.state), jax.tree.leaves(plain.state), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert "probe_noise_scale" not in plain.epochs
  assert len(probed.epochs["probe_noise_scale"]) == 2


def test_the_probe_is_the_step_on_its_own_batches_at_the_final_parameters(mesh1, probed):
  """By hand: the step's norms on the first 8 batches of the probe's permutation for the
  last epoch, at the run's final state, finite-n corrected and averaged."""
  config = probe_config()
  resolved = config_lib.resolve(config, n_devices=1)
  program = program_lib.build_program(resolved, mesh1)
  dataset = data.load(config.data)
  key = jax.random.fold_in(pipeline.probe_order_key(config.seed), 1)  # epoch index 1
  idx = np.asarray(pipeline.batch_order(256, 32, key)["idx"])
  assert idx.shape == (8, 32) and len(set(idx.ravel())) == 256  # one permutation, all full
  train_step = jax.jit(program.train_step)
  norms = {}
  for t, i in enumerate(idx):
    batch = dict(x=dataset.x_train[i], y=dataset.y_train[i], mask=np.ones(32, np.float32))
    _, m = train_step(probed.state.replace(step=probed.state.step + t), batch)
    for name in ("g_small_sq", "g_big_sq", "b_small", "b_big"):
      norms.setdefault(name, []).append(float(m[name]))
  want = noise.probe_stats({k: np.asarray(v) for k, v in norms.items()}, n_population=256)
  np.testing.assert_allclose(probed.epochs["probe_grad_sq"][-1], want.grad_sq, rtol=1e-5)
  np.testing.assert_allclose(probed.epochs["probe_trace_sigma"][-1], want.trace_sigma,
                             rtol=1e-5)
  np.testing.assert_allclose(probed.epochs["probe_noise_scale"][-1], want.b_simple, rtol=1e-5)


def test_the_probe_on_every_full_batch_is_close_to_exact(mesh1):
  # sklearn's digits, k=128 in 8 groups, one epoch: the probe's 11 batches tile 1,408 of
  # the 1,438 training digits, so one batch's noise in |G|^2 cancels out of their mean.
  config = probe_config(**{"data.name": "digits", "batch_size": 128, "noise_groups": 8,
                           "num_epochs": 1, "noise_probe_batches": 11})
  resolved = config_lib.resolve(config, n_devices=1)
  run = run_lib.create_run(resolved, mesh=mesh1)
  (history,) = loop.run_loop(run)
  unit = data.load(config.data).unit()
  ex = noise.exact(noise.classifier_loss(run.program.model), history.state.params,
                   unit.x_train, unit.y_train)
  got = history.epochs["probe_noise_scale"][-1]
  assert abs(got / ex.b_simple - 1) < 0.1, (got, ex.b_simple)
  # ...where single batches (what the trainer has per step) miss by far more.
  out = jax.device_get(run.probe(history.state, 0))
  one = [noise.probe_stats({k: v[t:t + 1] for k, v in out.items()},
                           n_population=resolved.spec.n_train).b_simple for t in range(11)]
  assert max(abs(b / ex.b_simple - 1) for b in one) > 0.3, one


def test_a_population_probes_each_member_as_its_own_run(mesh1):
  members = [config_lib.resolve(probe_config(learning_rate=lr, seed=s, num_epochs=1),
                                n_devices=1)
             for lr, s in ((0.5, 0), (0.2, 1))]
  together = loop.run_loop(run_lib.create_run(members, mesh=mesh1))
  # The second member: its own probe order and parameters, not the first's.
  (alone,) = loop.run_loop(run_lib.create_run(members[1], mesh=mesh1))
  np.testing.assert_allclose(together[1].epochs["probe_noise_scale"],
                             alone.epochs["probe_noise_scale"], rtol=1e-4)
  assert not np.allclose(together[0].epochs["probe_noise_scale"],
                         alone.epochs["probe_noise_scale"], rtol=1e-2)


def test_the_probe_runs_on_eight_devices(mesh8):
  history = trainer.train(probe_config(noise_probe_batches=3, num_epochs=1), mesh=mesh8)
  assert np.all(np.isfinite(history.epochs["probe_noise_scale"]))
  assert np.all(np.asarray(history.epochs["probe_noise_scale"]) > 0)


@pytest.mark.parametrize("overrides,valid", [
    (dict(noise_probe_batches=-1), "an integer >= 0"),
    (dict(noise_scale=False), "0 unless noise_scale=True"),
    (dict(noise_probe_batches=9), "at most the 8 full batches of k=32"),
    (dict(batch_size="auto"), "0 with batch_size='auto'"),
    (dict(**{"data.pipeline": "grain"}), "0 with data.pipeline='grain'"),
])
def test_bad_probe_settings_are_named(overrides, valid):
  with pytest.raises(ConfigError) as e:
    config_lib.resolve(probe_config(**overrides), n_devices=1)
  assert e.value.field == "noise_probe_batches" and valid in e.value.valid, str(e.value)
