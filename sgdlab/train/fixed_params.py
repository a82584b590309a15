"""The online noise scale at held parameters: the train step run on many batches, every
update thrown away, so all batches see the same parameters (McCandlish et al. 2018).

It drives the step, so it lives with the step (floor train), above the estimators in
`sgdlab.noise` whose maths it uses.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sgdlab.noise import NoiseStats, probe_stats
from sgdlab.train import step as step_lib


def online_at_fixed_params(train_step: Callable, mesh: Mesh, state: step_lib.TrainState,
                           x: np.ndarray | jax.Array, y: np.ndarray | jax.Array, *,
                           batch_size: int, num_batches: int, seed: int = 0,
                           n_population: int | None = None) -> NoiseStats:
  """The online estimate at the parameters of `state`, averaged over many batches.

  `train_step` is the step built with noise_scale=True (Program.train_step); it is run
  on `num_batches` full batches drawn epoch by epoch without replacement, and every
  update is discarded, so all batches see the same parameters. One compiled scan:
  no per-step dispatch (see sgdlab.train.step on multi-device loops on CPU).
  """
  n = int(x.shape[0])
  if not 1 <= batch_size <= n:
    raise ValueError(f"batch_size {batch_size} must be in [1, {n}] (the examples given)")
  if num_batches < 1:
    raise ValueError(f"num_batches {num_batches} must be >= 1")
  replicated = NamedSharding(mesh, P())
  x, y, state = jax.device_put((x, y, state), replicated)
  key = jax.device_put(jax.random.PRNGKey(seed), replicated)
  out = jax.device_get(_fixed_params_norms(train_step, mesh, batch_size, num_batches,
                                           state, x, y, key))
  return probe_stats(out, n_population=n_population)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _fixed_params_norms(train_step, mesh, batch_size, num_batches, state, x, y, key):
  n = x.shape[0]
  per_epoch = n // batch_size
  epochs = -(-num_batches // per_epoch)

  def order(e):
    order = jax.random.permutation(jax.random.fold_in(key, e), n)
    return order[:per_epoch * batch_size].reshape(per_epoch, batch_size)

  idx = jax.vmap(order)(jnp.arange(epochs)).reshape(-1, batch_size)[:num_batches]
  batch_sharding = NamedSharding(mesh, P(step_lib.DATA))

  def batch_of(i):
    batch = dict(x=x[i], y=y[i], mask=jnp.ones((batch_size,), jnp.float32))
    return jax.lax.with_sharding_constraint(batch, batch_sharding)

  return step_lib.norms_at_fixed_state(train_step, state, batch_of, idx)
