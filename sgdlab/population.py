"""Population training: many (learning_rate, lr_decay, seed) runs as one compiled program.

A small model at small k leaves an accelerator mostly idle, and the classic sweeps
(lr = 1, 0.1, 0.01; decay on or off; a few seeds) differ only in numbers the step
reads from its state. `TrainState.hparams` holds learning_rate and lr_decay as arrays
and the step computes lr_t from them, so `jax.vmap` over a stack of states turns the
same compiled epoch (sgdlab.step.make_epoch) into one program for the whole population.

Batch order. A single run's order derives from its seed (trainer.data_order_key), so
the data key is vmapped too: each member permutes and gathers its own batches, exactly
as its separate run would, and seeds can be members like any learning rate. Sharing
one order among same-seed members (one gather, the batch broadcast to all) was
measured slower on a 2-core CPU, not faster: an unbatched input against batched weights
makes XLA transpose every weight matrix each step, while per-member batches give
plain batched matmuls; the gather itself is k examples per member and step. So a
member's History equals `trainer.train(config)`'s up to float summation order.

Divergence is per member: the step already freezes a member whose loss or gradient is
not finite, the others go on, and the run ends when every member has diverged or the
epochs are done. A member's `wall_time` is the population's epoch time (they share
it), so its examples_per_sec is n_train / wall and the population's throughput is the
sum over members. A population does not checkpoint: an interrupted one starts again.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from sgdlab import config as config_lib
from sgdlab import data, noise, trainer
from sgdlab.errors import ConfigError
from sgdlab.history import History
from sgdlab.sweep import Point

# The fields members may differ in; all else (model, data, k, schedule...) is shared.
MEMBER_FIELDS = ("learning_rate", "lr_decay", "seed")
# Fields that do not change the computation.
_LABEL_FIELDS = ("name", "sweep", "population")


def shared_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Every field a population's members must agree on, flattened to dotted names."""
  d = config_lib.to_dict(config)
  for key in MEMBER_FIELDS + _LABEL_FIELDS:
    d.pop(key, None)
  return config_lib.flatten(d)


def _group_key(config: ml_collections.ConfigDict) -> str:
  return json.dumps(shared_fields(config), sort_keys=True, default=str)


def group(points: Sequence[Point], *, max_size: int | None = None) -> list[list[Point]]:
  """Points that can train as one population, in sweep order.

  Points with `config.population = True` that differ only in learning_rate, lr_decay
  and seed share a group (at most max_size members). The others stay alone, as do
  points with batch_size="auto": the memory estimate is for one run, not a stack.
  """
  if max_size is not None and max_size < 1:
    raise ValueError(f"max_size={max_size!r}: an integer >= 1, or None for no limit")
  groups: list[list[Point]] = []
  open_groups: dict[str, list[Point]] = {}
  for point in points:
    c = point.config
    if not c.get("population", False) or c.batch_size == "auto":
      groups.append([point])
      continue
    key = _group_key(c)
    members = open_groups.get(key)
    if members is None or (max_size is not None and len(members) >= max_size):
      members = open_groups[key] = []
      groups.append(members)
    members.append(point)
  return groups


def _check_compatible(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """ConfigError naming the first field a member does not share with member 0."""
  if any(c.batch_size == "auto" for c in configs):
    raise ConfigError("batch_size", "auto", f"a fixed k in a population of {len(configs)} "
                      "members (the memory estimate is for one run)")
  first = shared_fields(configs[0])
  for i, c in enumerate(configs[1:], 1):
    fields = shared_fields(c)
    for key in sorted(set(first) | set(fields)):
      if first.get(key) != fields.get(key):
        raise ConfigError(key, fields.get(key),
                          f"{first.get(key)!r} as in member 0, since population members "
                          f"may differ only in {', '.join(MEMBER_FIELDS)} (member {i})")


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _member(tree: Any, i: int) -> Any:
  return jax.tree.map(lambda a: a[i], tree)


def init_population(program: trainer.Program, configs: Sequence[ml_collections.ConfigDict]
                    ) -> tuple[Any, jax.Array]:
  """Stacked initial states and data-order keys; member i is what configs[i] starts from."""
  states = [dataclasses.replace(program, config=c).init_state() for c in configs]
  return _stack(states), _stack([trainer.data_order_key(c) for c in configs])


def population_epoch(program: trainer.Program) -> Callable[..., tuple[Any, Any]]:
  """`program.epoch_fn()` vmapped over the members' states and data keys (data shared).

  Jitted `epoch(states, x, y, data_keys, epoch) -> (states, metrics [P, steps])`.
  """
  return jax.jit(jax.vmap(program.epoch_fn(), in_axes=(0, None, None, 0, None)),
                 donate_argnums=0)


def train_population(configs: Sequence[ml_collections.ConfigDict], *,
                     dataset: data.Dataset | None = None,
                     mesh: Mesh | None = None) -> list[History]:
  """Train every config as one vmapped program; one History per config, in order.

  Each History has the fields, diagnostics and divergence record that
  `trainer.train(config)` would give; `state` holds that member's final TrainState.
  A single config is trained by `trainer.train` itself: a population of one would
  only add vmap's cost (2x slower at k=32 on a 2-core CPU).

  Raises:
    ConfigError: a config is invalid, or the members differ in a field other than
      learning_rate, lr_decay and seed.
  """
  configs = list(configs)
  if len(configs) <= 1:
    return [trainer.train(c, dataset=dataset, mesh=mesh) for c in configs]
  for c in configs:
    config_lib.validate(c)
  _check_compatible(configs)
  prepared = []
  for c in configs:
    c, dataset, mesh = trainer.prepare(c, mesh, dataset)
    prepared.append(c)
  size = len(prepared)
  if prepared[0].checkpoint_every_epochs:
    logging.warning("a population of %d does not checkpoint (checkpoint_every_epochs=%d): "
                    "an interrupted population starts again", size,
                    prepared[0].checkpoint_every_epochs)
  program = trainer.build_program(prepared[0], dataset, mesh)

  x_train, y_train, x_test, y_test = trainer.replicate(
      (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test), mesh)
  state, data_keys = trainer.replicate(init_population(program, prepared), mesh)

  t0 = time.perf_counter()
  epoch_fn = population_epoch(program).lower(state, x_train, y_train, data_keys,
                                              jnp.int32(0)).compile()
  evaluate = jax.jit(jax.vmap(program.evaluate_fn(), in_axes=(0, None, None)))
  evaluate = evaluate.lower(state.params, x_test, y_test).compile()
  compile_time = time.perf_counter() - t0

  histories = [History(name=config_lib.run_name(c), config=config_lib.to_dict(c),
                       compile_time=compile_time) for c in prepared]
  emas = [noise.NoiseEMA(c.noise_ema) if c.noise_scale else None for c in prepared]
  live = list(range(size))
  num_epochs = prepared[0].num_epochs
  for epoch in range(num_epochs):
    start = time.perf_counter()
    steps_before = np.asarray(jax.device_get(state.step))
    state, step_metrics = epoch_fn(state, x_train, y_train, data_keys, jnp.int32(epoch))
    step_metrics = jax.device_get(step_metrics)  # blocks: one sync per epoch
    diverged_at = np.asarray(jax.device_get(state.diverged_at))
    going_on = [m for m in live if diverged_at[m] < 0]
    test = jax.device_get(evaluate(state.params, x_test, y_test)) if going_on else None
    wall = time.perf_counter() - start
    for m in live:
      member_metrics = _member(step_metrics, m)
      if diverged_at[m] >= 0:
        trainer.record_divergence(histories[m], member_metrics, epoch=epoch,
                                  steps_before=int(steps_before[m]),
                                  diverged_at=int(diverged_at[m]), ema=emas[m])
      else:
        trainer.record_epoch(histories[m], prepared[m], epoch, member_metrics,
                             _member(test, m), wall=wall, n_train=dataset.n_train,
                             ema=emas[m])
    logging.info("population of %d | epoch %d/%d | %d going on | %.2fs %.0f member-ex/s",
                 size, epoch + 1, num_epochs, len(going_on), wall,
                 len(live) * dataset.n_train / wall)
    live = going_on
    if not live:
      break
  return [trainer.finish(h, c, _member(state, m))
          for m, (h, c) in enumerate(zip(histories, prepared))]
