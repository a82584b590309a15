"""The benchmark harness: whole epochs through the Run are the loop's epochs, and the
alternation times what it says in the order it says."""

import math
import time

import jax
import numpy as np
import pytest

from conftest import tiny_config
from sgdlab.studies import bench
from sgdlab.train import loop


def _run(mesh, **overrides):
  return bench.create(tiny_config(**overrides), None, mesh)


@pytest.mark.parametrize("steps_per_call", [0, 2])
def test_run_epochs_train_what_the_loop_trains(mesh1, steps_per_call):
  # 200 examples at k=32: 7 steps an epoch, the last one partial; in calls of 2: 2+2+2+1.
  config = dict(num_epochs=2, steps_per_call=steps_per_call)
  (history,) = loop.run_loop(_run(mesh1, **config))
  epochs = bench.RunEpochs(_run(mesh1, **config))
  losses = [epochs.run_epoch(e) for e in range(2)]
  assert epochs.metrics["loss"].shape == (7,)
  np.testing.assert_array_equal(losses[-1], history.steps["loss"][-1])
  for a, b in zip(jax.tree.leaves(history.state.params),
                  jax.tree.leaves(epochs.params())):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_noise_host_keeps_the_loops_estimates(mesh1):
  config = dict(num_epochs=2, noise_scale=True)
  (history,) = loop.run_loop(_run(mesh1, **config))
  run = _run(mesh1, **config)
  host = bench.NoiseHost(run)
  epochs = bench.RunEpochs(run, host=host)
  for e in range(2):
    epochs.run_epoch(e)
  steps = host.history.steps
  np.testing.assert_allclose(steps["grad_sq"], history.steps["grad_sq"], rtol=1e-6)
  np.testing.assert_allclose(steps["trace_sigma"], history.steps["trace_sigma"], rtol=1e-6)


def test_a_run_that_diverged_raises(mesh1):
  epochs = bench.RunEpochs(_run(mesh1, learning_rate=1e6))
  with pytest.raises(FloatingPointError, match="diverged at k=32"):
    for e in range(3):
      epochs.run_epoch(e)


class _Fake:
  def __init__(self, name, log, seconds=0.0):
    self.name, self.log, self.seconds = name, log, seconds

  def prepare(self, epoch):
    self.log.append(("prepare", self.name, epoch))

  def run_epoch(self, epoch):
    self.log.append((self.name, epoch))
    if self.seconds:
      time.sleep(self.seconds)


def test_alternate_orders_turns_and_numbers_epochs():
  log = []
  loops = {n: _Fake(n, log) for n in "abc"}
  t = bench.alternate(loops, 2, epochs=2, order="rotate", last=("c",), start=1)
  runs = [x for x in log if x[0] != "prepare"]
  # Rounds 1 and 2: the rotating loops start one later each round, "c" always last;
  # round g trains epochs 1 + 2g and 2 + 2g for every loop.
  assert runs == [("b", 3), ("b", 4), ("a", 3), ("a", 4), ("c", 3), ("c", 4),
                  ("a", 5), ("a", 6), ("b", 5), ("b", 6), ("c", 5), ("c", 6)]
  assert log[0] == ("prepare", "b", 3) and len(log) == 2 * len(runs)
  assert {n: len(v) for n, v in t.wall.items()} == {"a": 4, "b": 4, "c": 4}
  assert bench.turn_order("abc", 1, "swap") == list("cba")
  with pytest.raises(ValueError, match="order"):
    bench.turn_order("ab", 0, "random")


def test_alternate_times_a_slow_loop_once_when_pruning():
  log = []
  loops = {"fast": _Fake("fast", log), "slow": _Fake("slow", log, seconds=0.05)}
  t = bench.alternate(loops, 3, prune=2.0)
  assert len(t.wall["fast"]) == 3 and len(t.wall["slow"]) == 1 and t.pruned == {"slow"}


def test_timings_rates_and_ratios():
  t = bench.Timings(wall={"a": [1.0, 2.0, 4.0], "b": [2.0, 2.0, 2.0]},
                    cpu={"a": [1.0, 1.0, 1.0], "b": [3.0, 3.0, 3.0]})
  assert t.rate("a", 8) == (4.0, 2.0, 8.0)
  median, q25, q75 = t.ratio("a", "b")  # per round b / a: 2, 1, 0.5
  assert (median, q25, q75) == (1.0, 0.75, 1.5)
  assert t.ratio("a", "b", cpu=True)[0] == 3.0
  assert math.isclose(bench.max_param_diff([np.ones(2)], [np.zeros(2)]), 1.0)
