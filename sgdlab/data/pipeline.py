"""How training data reaches the devices: resident arrays and a batch plan per (seed, epoch).

The dataset is placed on every device once. Each epoch's order is a function of
(seed, epoch) alone, computed on device as a plan of indices [steps, k] with a mask for
the padded last batch; the compiled steps gather their batches from the resident arrays
by those indices (`gather`), so nothing crosses the host per step and a resumed run sees
the same batches. In a multi-process run each process places the whole dataset on its
own devices and each device gathers only its slice of every global batch.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Feed = dict[str, jax.Array]  # idx [steps, k] int32, mask [steps, k] float32


def data_order_key(seed: int) -> jax.Array:
  """The key of a run's batch order: (key, epoch) -> permutation; derives from the seed."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 1)


def batch_plan(n: int, batch_size: int, key: jax.Array | None, *,
               drop_remainder: bool = False) -> Feed:
  """Indices and mask [steps, k] covering the n examples once, in a fresh permutation.

  The last partial batch is padded with index 0 and mask 0, so every example is seen
  exactly once per epoch and none twice; with drop_remainder it is left out instead.
  Without a key the order is 0..n-1.
  """
  order = jnp.arange(n) if key is None else jax.random.permutation(key, n)
  if drop_remainder:
    steps = n // batch_size
    idx = order[:steps * batch_size].reshape(steps, batch_size)
    return dict(idx=idx.astype(jnp.int32), mask=jnp.ones((steps, batch_size), jnp.float32))
  steps = math.ceil(n / batch_size)
  pad = steps * batch_size - n
  idx = jnp.concatenate([order, jnp.zeros((pad,), order.dtype)]).reshape(steps, batch_size)
  mask = (jnp.arange(steps * batch_size) < n).astype(jnp.float32).reshape(steps, batch_size)
  return dict(idx=idx.astype(jnp.int32), mask=mask)


def gather(x: jax.Array, y: jax.Array, feed_step: Feed) -> dict[str, jax.Array]:
  """One step's batch from the resident arrays (inside a compiled program)."""
  i = feed_step["idx"]
  return dict(x=x[i], y=y[i], mask=feed_step["mask"])


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Place host arrays on every device of the mesh (data and state are replicated).

  In a multi-process run each process holds the whole value and fills only its own
  devices.
  """
  sharding = NamedSharding(mesh, P())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)
