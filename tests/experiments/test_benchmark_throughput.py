"""The throughput benchmark (sgdlab.studies.throughput) on a tiny problem, and the step
change it led to.

No timing is asserted: the script reports speed. These tests check that every loop
runs and reports positive numbers, that the hand-written JAX loop does exactly the
SGD sgdlab does (so the benchmark compares like with like), and that the cheaper
finiteness check in sgdlab.step still catches every non-finite gradient.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sgdlab import data
from sgdlab.studies import baselines as loops
from sgdlab.studies import bench as harness
from sgdlab.studies import throughput as bench
from sgdlab.train import step
from sgdlab import optim

HIDDEN = (32, 16)  # small and uneven: a transposed or misordered layer shows up


def _tiny_dataset(n_train=100):
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(n_train + 20, 8, 8, 1)).astype(np.float32)
  y = rng.integers(0, 10, n_train + 20).astype(np.int32)
  return data.Dataset("tiny", x[:n_train], y[:n_train], x[n_train:], y[n_train:], 10)


@pytest.mark.parametrize("model,sizes", [
    ("mlp", dict(hidden=HIDDEN)), ("cnn", dict(features=(3, 4), dense=8))])
def test_benchmark_reports_positive_throughput_and_parity(mesh1, model, sizes):
  # k=32 on 100 examples: three full batches and a partial one of 4; the CNN tiled to 2.
  results = bench.benchmark(_tiny_dataset(), [32], epochs=1, repeats=2, mesh=mesh1,
                            model=model, with_torch=False, prune=1e9,
                            cnn_steps=2 if model == "cnn" else 0, **sizes)
  (r,) = results
  assert r.n_train == (64 if model == "cnn" else 100)
  for name in (harness.SGDLAB, loops.JAX_LOOP, loops.JAX_STEP):
    assert len(r.epoch_times[name]) == 2 and all(t > 0 for t in r.epoch_times[name])
    median, low, high = r.examples_per_sec(name)
    assert 0 < low <= median <= high
    assert np.isfinite(r.final_loss[name])
  assert r.best_hand in (loops.JAX_LOOP, loops.JAX_STEP)
  assert r.ratio(harness.SGDLAB)[0] > 0 and r.ratio(harness.SGDLAB, cpu=True)[0] > 0
  # Same initial parameters and batch order: one epoch of each gives the same weights,
  # for the CNN too, whose sgdlab form computes the kernel gradient as a matmul.
  assert max(r.parity.values()) < 1e-5
  table = bench.format_table(results)
  assert table.splitlines()[2].startswith("| 32 |") and "PyTorch" not in table


def test_a_loop_far_slower_than_the_best_is_timed_once(mesh1):
  (r,) = bench.benchmark(_tiny_dataset(), [32], epochs=2, repeats=1, mesh=mesh1,
                         hidden=HIDDEN, with_torch=False, prune=0.0)
  assert sorted(len(t) for t in r.epoch_times.values()) == [1, 1, 2]  # best one kept
  assert "(once)" in bench.format_table([r])


@pytest.mark.parametrize("pattern", ["scan", "step"])
def test_sgdlab_and_jax_loops_keep_matching_over_epochs(mesh1, pattern):
  ds = _tiny_dataset()
  config = harness.bench_config("mlp", 16, 0.1, 1e-2, 0, hidden=HIDDEN)
  sg = harness.RunEpochs(harness.create(config, ds, mesh1))
  start = loops.as_hand_params(loops.sgdlab_params(sg.params(), "mlp"), "mlp", ds)
  jl = loops.make_jax_loop(ds, 16, lr=0.1, decay=1e-2, hidden=HIDDEN, pattern=pattern,
                           params=start, device=mesh1.devices.flat[0])
  for e in range(3):
    np.testing.assert_allclose(sg.run_epoch(e), jl.run_epoch(e), rtol=1e-5)
  assert harness.max_param_diff(loops.sgdlab_params(sg.params(), "mlp"), jl.params()) < 1e-5


def test_torch_loop_trains():
  pytest.importorskip("torch")
  ds = _tiny_dataset()
  loop = loops.make_torch_loop(ds, 32, lr=0.1, decay=1e-3, hidden=HIDDEN)
  before = loop.params()
  losses = [loop.run_epoch(e) for e in range(2)]
  assert all(np.isfinite(losses))
  assert [w.shape for w in before[::2]] == [(64, 32), (32, 16), (16, 10)]
  assert harness.max_param_diff(before, loop.params()) > 0


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_all_finite_flags_any_non_finite_element(bad):
  tree = dict(w=np.ones((7, 3, 2), np.float32), b=np.zeros(5, np.float32),
              s=np.float32(2.0))
  check = jax.jit(step._all_finite)
  assert bool(check(tree))
  # Large finite values: a plain sum would overflow to inf; the check must not.
  assert bool(check(jax.tree.map(lambda a: np.full_like(a, 3e38), tree)))
  for key, index in (("w", (6, 2, 1)), ("b", (0,)), ("s", ())):
    broken = jax.tree.map(np.copy, tree)
    broken[key] = np.array(broken[key])
    broken[key][index] = bad
    assert not bool(check(broken)), (key, bad)


class _InfiniteGradient(nn.Module):
  """Finite loss, non-finite gradient: d sqrt(s) / ds is inf at s = 0."""

  @nn.compact
  def __call__(self, x, train=False):
    s = self.param("s", nn.initializers.zeros, ())
    return nn.Dense(10)(x.reshape((x.shape[0], -1))) + jnp.sqrt(s)


@pytest.mark.parametrize("mesh_name", ["mesh1", "mesh8"])
def test_non_finite_gradient_with_finite_loss_freezes_the_state(mesh_name, request):
  mesh = request.getfixturevalue(mesh_name)
  model, tx = _InfiniteGradient(), optim.scale_by_lr()
  state = step.init_state(model, tx, (4,), seed=0, learning_rate=0.1, lr_decay=0.0)
  before = jax.device_get(state.params)
  train_step = jax.jit(step.make_train_step(model, tx, lambda c, lr, d: lr, mesh))
  rng = np.random.default_rng(0)
  batch = jax.device_put(dict(x=rng.normal(size=(8, 4)).astype(np.float32),
                              y=np.arange(8, dtype=np.int32),
                              mask=np.ones(8, np.float32)), NamedSharding(mesh, P(step.DATA)))
  state, metrics = train_step(state, batch)
  assert np.isfinite(metrics["loss"])
  assert int(state.diverged_at) == 0 and int(state.step) == 0
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)
