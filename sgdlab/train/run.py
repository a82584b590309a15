"""A run: the model, the one train step, its compiled programs, placed data and state.

`Program` is what a config compiles to, with no data: the trainer, the memory estimator
(which compiles it with abstract inputs), population runs, trials and experiments all
build it with `build_program`, so the step that is measured is the step that trains.
`Run` adds the placed dataset and is what `sgdlab.train.loop` drives.

A Program serves 1..P members: runs that differ only in learning_rate, lr_decay and seed
(numbers the step reads from its state). With P > 1 every program is `jax.vmap`ped over
the members' stacked states and their own batch orders, the data shared; with P = 1
nothing is vmapped.

The loop advances training through one program, `advance(state, [x, y,] feed) ->
(state, metrics)`, that scans the step over the feed's steps axis: a whole epoch in
one scan by default, or `config.steps_per_call` steps per call. The feed holds indices
into the placed x and y, or (grain, `sgdlab.data.stream`) the batches themselves.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sgdlab import models, optim
from sgdlab.config import Resolved
from sgdlab import data as data_lib
from sgdlab.data import Dataset, pipeline, stream
from sgdlab.train import step


@dataclasses.dataclass(frozen=True)
class Program:
  """The compiled pieces of a run (or population), built from resolved configs alone."""

  members: tuple[Resolved, ...]
  mesh: Mesh
  model: Any
  tx: Any
  lr_fn: step.LrFn
  train_step: Callable  # step.make_train_step(...): shard_map'd, not jitted
  eval_step: Callable
  checked_step: Callable  # the same step checking every gradient element (see advance)

  @property
  def first(self) -> Resolved:
    return self.members[0]

  @property
  def size(self) -> int:
    return len(self.members)

  @property
  def population(self) -> bool:
    return len(self.members) > 1

  @property
  def steps_per_epoch(self) -> int:
    return self.first.steps_per_epoch

  @property
  def streamed(self) -> bool:
    """Batches come from the grain pipeline (not gathered from placed arrays)."""
    return self.first.config.data.pipeline == "grain"

  @property
  def steps_per_call(self) -> int:
    """Steps each advance call runs: config.steps_per_call, or the whole epoch (one
    step when streamed: a call's batches are on the device at once)."""
    return min(self.first.config.steps_per_call or (1 if self.streamed else
                                                      self.steps_per_epoch), self.steps_per_epoch)

  def feed_structs(self, steps: int) -> pipeline.Feed:
    """The abstract feed of `steps` steps, placed as the trainer places it."""
    k, shape = self.first.batch_size, tuple(self.first.spec.input_shape)
    struct = lambda shape, dtype, *spec: jax.ShapeDtypeStruct(  # noqa: E731
        shape, dtype, sharding=NamedSharding(self.mesh, P(*spec)))
    lead = (self.size,) if self.population else ()
    if not self.streamed:
      return dict(idx=struct((*lead, steps, k), jnp.int32), mask=struct((steps, k), jnp.float32))
    spec = [None] * (len(lead) + 1) + [step.DATA]
    return dict(x=struct((*lead, steps, k, *shape), jnp.float32, *spec),
                y=struct((*lead, steps, k), jnp.int32, *spec),
                mask=struct((steps, k), jnp.float32, None, step.DATA))

  def member(self, tree: Any, i: int) -> Any:
    """Member i's part of a tree the programs return (the tree itself when P = 1)."""
    return member(tree, i) if self.population else tree

  def init_state(self) -> step.TrainState:
    """Member i's initial state from its seed alone; stacked when P > 1."""
    states = [step.init_state(self.model, self.tx, tuple(m.spec.input_shape),
                              seed=m.config.seed, learning_rate=m.learning_rate,
                              lr_decay=m.config.lr_decay) for m in self.members]
    return states[0] if not self.population else _stack(states)

  def abstract_state(self) -> step.TrainState:
    return jax.eval_shape(self.init_state)

  def data_keys(self) -> jax.Array:
    keys = [pipeline.data_order_key(m.config.seed) for m in self.members]
    return keys[0] if not self.population else jnp.stack(keys)

  def plan_fn(self) -> Callable[[jax.Array, jax.Array], pipeline.Feed]:
    """Jitted `plan(data_keys, epoch) -> feed` of an epoch: idx [P?, steps, k], mask."""
    c = self.first
    n, k = c.spec.n_train, c.batch_size

    def plan(key, epoch):
      return pipeline.batch_plan(n, k, jax.random.fold_in(key, epoch),
                                 drop_remainder=c.config.drop_remainder)

    if self.population:
      each = jax.vmap(plan, in_axes=(0, None))

      def plan(keys, epoch):  # one mask for all: it depends on the position alone
        feed = each(keys, epoch)
        return dict(idx=feed["idx"], mask=feed["mask"][0])

    return jax.jit(plan)

  def advance_fn(self, checked: bool = False) -> Callable[..., Any]:
    """Jitted `advance(state, x, y, feed) -> (state, per-step metrics, finite)`: the
    train step scanned over the feed's steps, batches gathered on device; when
    streamed, `advance(state, feed)` with the batches in the feed.

    `finite` says every floating-point element of the new state (all members) is
    finite. The fast step (checked=False) checks only the loss per step; if finite is
    False, `Run.advance` reruns the call from the same state with the `checked` step,
    which freezes a run at the exact step a gradient went non-finite. So the input
    state is not donated: one more copy of the state, for exact divergence semantics
    without a per-step read of every gradient.
    """
    batch_sharding = NamedSharding(self.mesh, P(step.DATA))
    train_step = self.checked_step if checked else self.train_step

    streamed = self.streamed

    def advance(state, *data):
      *arrays, feed = data

      def body(state, feed_step):
        batch = dict(feed_step) if streamed else pipeline.gather(*arrays, feed_step)
        batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        return train_step(state, batch)

      return jax.lax.scan(body, state, feed)

    if self.population:
      axes = (0, dict(x=0, y=0, mask=None)) if streamed else (
          0, None, None, dict(idx=0, mask=None))
      advance = jax.vmap(advance, in_axes=axes)

    def advance_and_check(state, *data):
      state, metrics = advance(state, *data)
      return state, metrics, step.all_finite((state.params, state.opt_state))

    return jax.jit(advance_and_check)

  def evaluate_fn(self) -> Callable[[Any, jax.Array, jax.Array], step.Metrics]:
    """Jitted `evaluate(params, x, y) -> {loss, accuracy}` over a whole split, one scan."""
    batch_sharding = NamedSharding(self.mesh, P(step.DATA))
    eval_step, mesh = self.eval_step, self.mesh
    eval_batch_size = self.first.config.eval_batch_size

    def evaluate(params, x, y):
      # Any eval batch gives the same sums; round it to the device count.
      k = -(-min(eval_batch_size, x.shape[0]) // mesh.size) * mesh.size
      feed = pipeline.batch_plan(x.shape[0], k, None)

      def body(totals, feed_step):
        batch = jax.lax.with_sharding_constraint(pipeline.gather(x, y, feed_step),
                                                 batch_sharding)
        return jax.tree.map(jnp.add, totals, eval_step(params, batch)), None

      zero = dict(loss_sum=jnp.zeros(()), correct=jnp.zeros(()), count=jnp.zeros(()))
      totals, _ = jax.lax.scan(body, zero, feed)
      return dict(loss=totals["loss_sum"] / totals["count"],
                  accuracy=totals["correct"] / totals["count"])

    if self.population:
      evaluate = jax.vmap(evaluate, in_axes=(0, None, None))
    return jax.jit(evaluate)

  def eval_batch_fn(self) -> Callable[[Any, Any, pipeline.Feed], Any]:
    """Jitted `totals = add(params, totals, batch)`: one streamed evaluation batch, summed
    into the totals as the resident scan sums them."""
    batch_sharding = NamedSharding(self.mesh, P(step.DATA))
    eval_step = self.eval_step

    def add(params, totals, batch):
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
      return jax.tree.map(jnp.add, totals, eval_step(params, batch))

    if self.population:
      add = jax.vmap(add, in_axes=(0, 0, None))
    return jax.jit(add)


def build_program(members: Resolved | Sequence[Resolved], mesh: Mesh | None = None) -> Program:
  """Model, optimizer, schedule and the train/eval steps for resolved configs.

  Members of a population must differ only in learning_rate, lr_decay and seed
  (`sgdlab.sweep.groups` checks it when the sweep is planned).
  """
  members = (members,) if isinstance(members, Resolved) else tuple(members)
  mesh = step.make_mesh() if mesh is None else mesh
  first = members[0]
  c, total_steps = first.config, first.total_steps

  def lr_fn(count, learning_rate, lr_decay):
    return optim.build_schedule(c.schedule, learning_rate, lr_decay, total_steps)(count)

  model = models.build(c.model, first.spec.num_classes, first.dtype)
  tx = optim.direction(c.optimizer)
  make_step = functools.partial(step.make_train_step, model, tx, lr_fn, mesh,
                                accumulation_steps=first.accumulation_steps,
                                noise_scale=c.noise_scale)
  return Program(members=members, mesh=mesh, model=model, tx=tx, lr_fn=lr_fn,
                 train_step=make_step(check_gradients=False),
                 eval_step=step.make_eval_step(model, mesh), checked_step=make_step())


@dataclasses.dataclass
class Run:
  """A Program with its dataset placed on the devices, and its programs compiled."""

  program: Program
  dataset: Dataset | None  # None when streamed
  arrays: dict[str, jax.Array]  # x_train, y_train, x_test, y_test on every device
  data_keys: jax.Array
  compile_time: float = 0.0
  stream: stream.Stream | None = None  # the grain pipeline's training batches
  sources: dict[str, stream.ArraySource] = dataclasses.field(default_factory=dict)
  _epoch_plan: tuple[int, pipeline.Feed] | None = dataclasses.field(default=None, repr=False)
  _advance: dict = dataclasses.field(default_factory=dict, repr=False)
  _evaluate: dict = dataclasses.field(default_factory=dict, repr=False)
  _jitted: dict = dataclasses.field(default_factory=dict, repr=False)

  @property
  def members(self) -> tuple[Resolved, ...]:
    return self.program.members

  @property
  def block_each_call(self) -> bool:
    """Async multi-device dispatch can deadlock XLA:CPU's collectives: block per call."""
    mesh = self.program.mesh
    return mesh.size > 1 and mesh.devices.flat[0].platform == "cpu"

  def init_state(self) -> step.TrainState:
    return pipeline.replicate(self.program.init_state(), self.program.mesh)

  def plan(self, epoch: int) -> pipeline.Feed:
    """The epoch's batch plan (idx, mask), on the devices: both pipelines' order."""
    return self._jitted["plan"](self.data_keys, jnp.int32(epoch))

  def host_plan(self, epoch: int) -> tuple:
    """The plan on the host, for the grain pipeline to read by."""
    return tuple(jax.device_get(self.plan(epoch))[key] for key in ("idx", "mask"))

  def feed(self, epoch: int, start: int, n: int) -> pipeline.Feed:
    """Steps [start, start + n) of an epoch, as `advance` takes them."""
    if self.stream is None:
      if self._epoch_plan is None or self._epoch_plan[0] != epoch:
        self._epoch_plan = (epoch, self.plan(epoch))
      return slice_feed(self._epoch_plan[1], start, n)
    at = epoch * self.program.steps_per_epoch + start
    if self.stream.position != at:
      self.stream.seek(at)
    return pipeline.place_batches(self.stream.take(n), self.program.mesh, step.DATA,
                                  self.program.first.batch_size)

  def _data_args(self, feed: pipeline.Feed) -> tuple:
    return (feed,) if self.program.streamed else (self.arrays["x_train"],
                                                  self.arrays["y_train"], feed)

  def compile(self, state: step.TrainState, feed: pipeline.Feed, checked: bool = False) -> Any:
    """The advance program for this many steps (compiled once per length); the checked
    one only when a call needs it."""
    key = (int(feed["mask"].shape[0]), checked)
    if key not in self._advance:
      if checked and "checked" not in self._jitted:
        self._jitted["checked"] = self.program.advance_fn(checked=True)
      self._advance[key] = self._jitted["checked" if checked else "advance"].lower(
          state, *self._data_args(feed)).compile()
    return self._advance[key]

  def advance(self, state: step.TrainState, feed: pipeline.Feed
              ) -> tuple[step.TrainState, step.Metrics]:
    """Train on the feed's steps. A call whose new state is not finite is run again
    from `state` with every gradient checked, so it stops at the exact step."""
    args = self._data_args(feed)
    new_state, metrics, finite = self.compile(state, feed)(state, *args)
    if not bool(finite):
      new_state, metrics, _ = self.compile(state, feed, checked=True)(state, *args)
    return new_state, metrics

  def evaluate(self, params: Any, split: str = "test") -> step.Metrics:
    """Loss and accuracy of params over a whole split ("test" or "train")."""
    if self.program.streamed:
      return self._evaluate_streamed(params, split)
    x, y = self.arrays[f"x_{split}"], self.arrays[f"y_{split}"]
    if split not in self._evaluate:
      self._evaluate[split] = self._jitted["evaluate"].lower(params, x, y).compile()
    return self._evaluate[split](params, x, y)

  def _evaluate_streamed(self, params: Any, split: str) -> step.Metrics:
    program, source = self.program, self.sources[split]
    mesh, data_cfg = program.mesh, program.first.config.data
    k = -(-min(program.first.config.eval_batch_size, len(source)) // mesh.size) * mesh.size
    batches = stream.eval_batches(source, k, pipeline.process_columns(mesh, step.DATA, k),
                                  read_threads=data_cfg.read_threads, prefetch=data_cfg.prefetch)
    add = self._jitted.setdefault("eval_batch", program.eval_batch_fn())
    return pipeline.sum_batches(add, params, batches, mesh, step.DATA, k,
                                members=program.size if program.population else 0)

  def for_members(self, members: Sequence[Resolved]) -> Run:
    """The same compiled run for other members (other learning rates, seeds)."""
    program = dataclasses.replace(self.program, members=tuple(members))
    run = dataclasses.replace(self, program=program, _epoch_plan=None,
                              data_keys=pipeline.replicate(program.data_keys(), program.mesh))
    if program.streamed:  # the members' own batch orders
      _open_streams(run)
    return run


def create_run(members: Resolved | Sequence[Resolved], dataset: Dataset | None = None,
               mesh: Mesh | None = None, *, compile_now: bool = True) -> Run:
  """Build the Program, place the dataset (or open its streams) and keys, and compile the
  epoch's programs (compile_now=False: on first use, for runs that take a few steps
  only). Without a dataset the device pipeline loads `config.data`."""
  program = build_program(members, mesh)
  keys = pipeline.replicate(program.data_keys(), program.mesh)
  if program.streamed:
    run = Run(program, None, {}, keys)
    _open_streams(run)
  else:
    if dataset is None:
      dataset = data_lib.load(program.first.config.data)
    arrays = pipeline.replicate(dict(x_train=dataset.x_train, y_train=dataset.y_train,
                                     x_test=dataset.x_test, y_test=dataset.y_test),
                                program.mesh)
    run = Run(program, dataset, arrays, keys)
  run._jitted.update(plan=program.plan_fn(), advance=program.advance_fn(),
                     evaluate=program.evaluate_fn())
  if not compile_now:
    return run
  t0 = time.perf_counter()
  state = replicated_structs(program.abstract_state(), program.mesh)
  run.compile(state, program.feed_structs(program.steps_per_call))
  if not program.streamed:
    run._evaluate["test"] = run._jitted["evaluate"].lower(
        state.params, run.arrays["x_test"], run.arrays["y_test"]).compile()
  run.compile_time = time.perf_counter() - t0
  return run


def _open_streams(run: Run) -> None:
  """The grain pipeline's sources (train, test) and the training stream, read by plan."""
  program = run.program
  c = program.first.config
  run.sources.update(train=stream.open_split(c.data, "train"),
                     test=stream.open_split(c.data, "test"))
  k, columns = program.first.batch_size, pipeline.process_columns(program.mesh, step.DATA,
                                                                  program.first.batch_size)
  logging.info("grain: process %d reads columns [%d, %d) of every batch of %d",
               jax.process_index(), columns.start, columns.stop, k)
  run.stream = stream.Stream(run.sources["train"], run.host_plan, columns=columns,
                             steps_per_epoch=program.steps_per_epoch, num_epochs=c.num_epochs,
                             population=program.population, read_threads=c.data.read_threads,
                             prefetch=c.data.prefetch)


def slice_feed(feed: pipeline.Feed, start: int, n: int) -> pipeline.Feed:
  """Steps [start, start + n) of an epoch's feed (the steps axis is the last but one)."""
  if start == 0 and n == feed["mask"].shape[0]:
    return feed
  return {key: jax.lax.slice_in_dim(v, start, start + n, axis=v.ndim - 2)
          for key, v in feed.items()}


def replicated_structs(tree: Any, mesh: Mesh) -> Any:
  """Abstract arrays placed as the trainer places them: whole, on every device."""
  rep = NamedSharding(mesh, P())
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), tree)


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member(tree: Any, i: int) -> Any:
  """Member i of a stacked population tree."""
  return jax.tree.map(lambda a: a[i], tree)
