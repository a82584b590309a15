"""How training data reaches the devices: resident arrays and a batch order per (seed, epoch).

The dataset is placed on every device once. Each epoch's order is a function of
(seed, epoch) alone, computed on device as a order of indices [steps, k] with a mask for
the padded last batch; the compiled steps gather their batches from the resident arrays
by those indices (`gather`), so nothing crosses the host per step and a resumed run sees
the same batches. In a multi-process run each process places the whole dataset on its
own devices and each device gathers only its slice of every global batch. Batches that
are streamed instead (`sgdlab.data.stream`) are placed here too, split along k.

Images stay in their stored dtype up to the step: `scaled_step` turns uint8 pixels
into the float32 values the host would have made (`images.unit_table`), inside the
compiled program, so uint8 storage trains exactly as float32 storage does.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sgdlab.data import text
from sgdlab.data.images import unit_table

Feed = dict[str, jax.Array]  # idx [steps, k] int32, mask [steps, k] float32 (, draw int32)


def data_order_key(seed: int) -> jax.Array:
  """The key of a run's batch order: (key, epoch) -> permutation; derives from the seed."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 1)


def probe_order_key(seed: int) -> jax.Array:
  """The noise probe's batch order: its own key, so probing leaves training's unchanged."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 2)


def sharpness_order_key(seed: int) -> jax.Array:
  """The sharpness batches' order: its own key, the same permutation every epoch."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 3)


def batch_order(n: int, batch_size: int, key: jax.Array | None, *,
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


def gather(x: jax.Array, y: jax.Array, feed_step: Feed, seq_len: int = 0
           ) -> dict[str, jax.Array]:
  """One step's batch from the resident arrays (inside a compiled program); for text
  (seq_len > 0) the indices are window starts into the token stream x."""
  i = feed_step["idx"]
  if seq_len:
    inputs, targets = text.windows(x, i, seq_len)
    return dict(x=inputs, y=targets, mask=feed_step["mask"])
  return dict(x=x[i], y=y[i], mask=feed_step["mask"])


def unit_images(x: jax.Array, scale: float) -> jax.Array:
  """Stored images as the model sees them: uint8 looked up in the host's table of
  their float32 values at `scale`; float32 images (scaled already) unchanged."""
  if x.dtype != jnp.uint8:
    return x
  return jnp.asarray(unit_table(scale))[x]


def scaled_step(step_fn: Callable, scale: float) -> Callable:
  """`step_fn(state, batch)` taking batches of stored images (a train or eval step)."""
  def scaled(state, batch):
    return step_fn(state, dict(batch, x=unit_images(batch["x"], scale)))
  return scaled


def slice_feed(feed: Feed, start: int, n: int) -> Feed:
  """Steps [start, start + n) of an epoch's feed (the steps axis is the last but one)."""
  if start == 0 and n == feed["mask"].shape[0]:
    return feed
  return {key: jax.lax.slice_in_dim(v, start, start + n, axis=v.ndim - 2)
          for key, v in feed.items()}


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


def replicated_structs(tree: Any, mesh: Mesh) -> Any:
  """Abstract arrays placed as the trainer places them: whole, on every device."""
  rep = NamedSharding(mesh, P())
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), tree)


def process_columns(mesh: Mesh, axis: str, k: int) -> slice:
  """The columns of a global batch of k that this process's devices hold (all of them in
  a single-process run): what a streaming process reads."""
  spans = NamedSharding(mesh, P(axis)).addressable_devices_indices_map((k,)).values()
  starts = [s[0].start or 0 for s in spans]
  stops = [k if s[0].stop is None else s[0].stop for s in spans]
  lo, hi = min(starts), max(stops)
  if sum(b - a for a, b in set(zip(starts, stops))) != hi - lo:
    raise ValueError(f"this process's devices hold no contiguous part of the batch: {spans}")
  return slice(lo, hi)


def place_batches(host: dict[str, np.ndarray], mesh: Mesh, axis: str, k: int) -> Feed:
  """Streamed batches (x, y, draw? [P?, steps, k_local, ...], mask [steps, k_local]) as
  global arrays split over the mesh axis along k, from this process's columns."""
  def put(x, lead):
    spec = P(*([None] * lead), axis)
    sharding = NamedSharding(mesh, spec)
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    shape = (*x.shape[:lead], k, *x.shape[lead + 1:])
    return jax.make_array_from_process_local_data(sharding, x, shape)

  lead = host["y"].ndim - 1  # the steps axis, after the members axis of a population
  return {key: put(v, 1 if key == "mask" else lead) for key, v in host.items()}


def sum_batches(add: Any, params: Any, batches: Any, mesh: Mesh, axis: str, k: int, *,
                members: int = 0) -> dict[str, jax.Array]:
  """Loss and accuracy of a streamed evaluation: `totals = add(params, totals, batch)`
  over host batches of k (a population's totals per member)."""
  zeros = np.zeros((members,) if members else (), np.float32)
  totals = replicate(dict(loss_sum=zeros, correct=zeros, count=zeros), mesh)
  for batch in batches:
    placed = place_batches({key: v[None] for key, v in batch.items()}, mesh, axis, k)
    totals = add(params, totals, {key: v[0] for key, v in placed.items()})
  return dict(loss=totals["loss_sum"] / totals["count"],
              accuracy=totals["correct"] / totals["count"])
