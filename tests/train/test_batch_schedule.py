"""config.batch_size_schedule: k by epoch through the one loop; the state, the lr schedule
and the checkpoints carry across a change of k."""

import os
import shutil

import jax
import numpy as np
import pytest

import conftest
from conftest import tiny_config
from sgdlab import config as config_lib, trainer
from sgdlab.errors import ConfigError
from sgdlab.results import files
from test_resume import KILLABLE, _assert_point_equals, _reference, _rows, _run_killed
from test_resume import assert_same_run

SCHEDULE = {"batch_size_schedule.boundaries": (1, 3), "batch_size_schedule.sizes": (64, 96)}


def scheduled(**overrides):
  """200 examples: k=32 for epoch 1, 64 for epochs 2-3, 96 for epoch 4 (7, 4, 4, 3 steps)."""
  return tiny_config(**{"num_epochs": 4, **SCHEDULE, **overrides})


@pytest.fixture(scope="module")
def ramp(mesh1):
  return trainer.train(scheduled(), mesh=mesh1)


def test_the_schedule_sets_each_epochs_k_and_the_run_counts_its_updates(mesh1, ramp):
  r = config_lib.resolve(scheduled(), n_devices=1)
  assert r.batch_sizes == (32, 64, 64, 96) and r.phases == (32, 64, 96)
  assert r.epoch_end_steps == (7, 11, 15, 18) and r.total_steps == 18
  assert r.at_epoch(3).batch_size == 96 and r.at_epoch(3).total_steps == 18
  assert r.at_epoch(3).name == r.name == "k=32>64>96 lr=0.5 decay=0.001"
  assert ramp.epochs["batch_size"] == [32, 64, 64, 96]
  assert ramp.steps["batch_size"] == [32] * 7 + [64] * 8 + [96] * 3
  assert int(ramp.state.step) == 18 == len(ramp.steps["loss"])
  # Keras' decay counts updates across the changes: lr / (1 + decay t), t = 0 .. 17.
  np.testing.assert_allclose(ramp.steps["lr"], 0.5 / (1 + 1e-3 * np.arange(18)), rtol=1e-6)


@pytest.mark.slow
def test_an_empty_schedule_and_one_that_keeps_k_equal_the_plain_run(mesh1):
  plain = trainer.train(tiny_config(), mesh=mesh1)
  empty = trainer.train(tiny_config(**{"batch_size_schedule.boundaries": ()}), mesh=mesh1)
  assert_same_run(plain, empty)
  kept = trainer.train(tiny_config(**{"batch_size_schedule.boundaries": (2,),
                                      "batch_size_schedule.sizes": (32,)}), mesh=mesh1)
  assert kept.epochs.pop("batch_size") == [32, 32, 32] and kept.steps.pop("batch_size")
  assert_same_run(plain, kept)


def test_a_change_of_k_continues_the_state_of_the_k_before(mesh1, tmp_path):
  """Composed from plain runs: k=32 for one epoch, checkpointed; a plain k=64 run resumed
  from that checkpoint trains epoch 2 on the same state. Bitwise the scheduled run."""
  both = {"batch_size_schedule.boundaries": (1,), "batch_size_schedule.sizes": (64,)}
  ramp = trainer.train(tiny_config(num_epochs=2, **both), mesh=mesh1)
  ckpt = str(tmp_path / "ckpt")
  trainer.train(tiny_config(num_epochs=1, checkpoint_every_epochs=1), mesh=mesh1,
                checkpoint_dir=ckpt)
  then = trainer.train(tiny_config(num_epochs=2, batch_size=64, checkpoint_every_epochs=1),
                       mesh=mesh1, checkpoint_dir=ckpt)
  for a, b in zip(jax.tree.leaves(ramp.state), jax.tree.leaves(then.state), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert ramp.steps["loss"] == then.steps["loss"]


@pytest.mark.slow  # in-process: test_resume_across_a_change_of_k_is_bitwise
def test_kill_9_after_the_change_of_k_then_rerun_is_bitwise_equal(tmp_path, mesh1):
  """k=8 for two epochs, then 16: killed once three rows exist (the last at k=16)."""
  text = KILLABLE.replace("return c", "c.batch_size_schedule.boundaries = (2,)\n"
                          "  c.batch_size_schedule.sizes = (16,)\n  return c")
  workdir = tmp_path / "killed"
  point, log = _run_killed(tmp_path, workdir, lambda: len(_rows(workdir)) >= 3, text=text)
  assert "resumed from the checkpoint at epoch" in log
  reference = _reference(tmp_path, mesh1, text)
  assert reference.epochs["batch_size"] == [8, 8] + [16] * 6
  _assert_point_equals(point, reference)


@pytest.mark.parametrize("pipeline", ["device", "grain"])
def test_resume_across_a_change_of_k_is_bitwise(mesh1, tmp_path, ramp, pipeline):
  extra = ({} if pipeline == "device" else
           {"data.pipeline": "grain", "data.cache_dir": str(tmp_path / "cache")})
  ckpt = str(tmp_path / "ckpt")
  config = scheduled(checkpoint_every_epochs=1, **extra)
  full = trainer.train(config, mesh=mesh1, checkpoint_dir=ckpt)
  assert_same_run(ramp, full)  # the grain pipeline reads the device pipeline's batches
  for epoch in ("3", "4"):  # as if killed in epoch 3: resumes at k=64, then changes to 96
    shutil.rmtree(os.path.join(ckpt, epoch))
  assert_same_run(ramp, trainer.train(config, mesh=mesh1, checkpoint_dir=ckpt))


@pytest.mark.slow
def test_eight_devices_a_population_and_accumulation_train_the_same_run(mesh1, mesh8, ramp):
  def close(a, b):
    np.testing.assert_allclose(a.steps["loss"], b.steps["loss"], rtol=2e-5, atol=1e-6)
    for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params)):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)

  close(ramp, trainer.train(scheduled(), mesh=mesh8))
  close(ramp, trainer.train(scheduled(microbatch_size=16), mesh=mesh1))
  members = trainer.train_population([scheduled(), scheduled(learning_rate=0.1, seed=1)],
                                     mesh=mesh1)
  close(ramp, members[0])
  close(trainer.train(scheduled(learning_rate=0.1, seed=1), mesh=mesh1), members[1])
  assert members[1].steps["batch_size"] == ramp.steps["batch_size"]


def test_the_files_and_tensorboard_log_k_at_each_step(mesh1, tmp_path):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  workdir, logs = str(tmp_path / "run"), str(tmp_path / "tb")
  trainer.train(scheduled(), mesh=mesh1, workdir=workdir, log_dir=logs)
  assert files.load_history(workdir).epochs["batch_size"] == [32, 64, 64, 96]
  with open(os.path.join(workdir, "epochs.csv")) as f:
    assert "batch_size" in f.readline().strip().split(",")
  acc = EventAccumulator(logs)
  acc.Reload()
  k = acc.Scalars("step/batch_size")
  assert [e.step for e in k] == list(range(1, 19)) and k[7].value == 64 and k[-1].value == 96
  assert [e.step for e in acc.Scalars("test/accuracy")] == [7, 11, 15, 18]


@pytest.mark.parametrize("overrides,field,words", [
    ({"batch_size_schedule.boundaries": (3, 1)}, "batch_size_schedule.boundaries",
     "strictly increasing"),
    ({"batch_size_schedule.boundaries": (0,)}, "batch_size_schedule.boundaries",
     "strictly increasing"),
    ({"batch_size_schedule.boundaries": (4,)}, "batch_size_schedule.boundaries",
     "num_epochs=4"),
    ({"batch_size_schedule.sizes": (64,)}, "batch_size_schedule.sizes", "one per boundary"),
    ({"batch_size_schedule.sizes": (64, 201)}, "batch_size_schedule.sizes",
     "training set size 200"),
    ({"batch_size": "auto"}, "batch_size", "first k of the schedule"),
    ({"sharpness_batches": 3}, "batch_size_schedule.sizes", "k=96: sharpness_batches=3"),
    ({"schedule.warmup_epochs": 2.0}, "schedule.warmup_epochs", "boundaries[0]=1"),
    ({"microbatch_size": 16, "batch_size_schedule.sizes": (64, 88)},
     "batch_size_schedule.sizes", "k=88: microbatch_size=16"),
])
def test_a_bad_schedule_is_named(overrides, field, words):
  with pytest.raises(ConfigError) as e:
    config_lib.resolve(scheduled(**overrides), n_devices=1)
  assert e.value.field == field and words in str(e.value), str(e.value)


def test_k_that_does_not_divide_among_the_devices_is_named():
  with pytest.raises(ConfigError, match=r"sizes=\(64, 100\).*k=100.*device count 8"):
    config_lib.resolve(scheduled(**{"batch_size_schedule.sizes": (64, 100)}), n_devices=8)


def test_every_k_is_checked_against_the_memory_budget_and_auto_plans_the_largest(mesh1):
  with pytest.raises(ConfigError, match=r"batch_size_schedule.sizes.*k=32 needs"):
    trainer.decide_auto([config_lib.resolve(scheduled(memory_budget="1KiB"), n_devices=1)],
                        mesh1)
  (planned,) = trainer.decide_auto([config_lib.resolve(
      scheduled(microbatch_size="auto", dtype="float32"), n_devices=1)], mesh1)
  m = planned.config.microbatch_size
  assert m == 0 or all(k % m == 0 for k in planned.phases)  # every k takes the micro-batch
