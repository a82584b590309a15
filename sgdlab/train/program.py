"""What a config compiles to, with no data: the model, the one train step and the
programs built around it.

The trainer, the memory estimator (which compiles it with abstract inputs), population
runs, trials and experiments all build a `Program` with `build_program`, so the step
that is measured is the step that trains. `sgdlab.train.run.Run` adds placed data.

A Program serves 1..P members: runs that differ only in learning_rate, lr_decay and seed
(numbers the step reads from its state). With P > 1 every program is `jax.vmap`ped over
the members' stacked states and their own batch orders, the data shared; with P = 1
nothing is vmapped.

The loop advances training through one program, `advance(state, [x, y,] feed) ->
(state, metrics)`, that scans the step over the feed's steps axis: a whole epoch in
one scan by default, or `config.steps_per_call` steps per call. The feed holds indices
into the placed x and y (window starts into a placed token stream, for text), or
(grain, `sgdlab.data.stream`) the batches themselves.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sgdlab import curvature, models, optim
from sgdlab.config import Resolved
from sgdlab.data import augment, pipeline, text
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
  def splits(self) -> tuple[str, ...]:
    """The dataset's splits: train and test, and validation when one is held out."""
    return ("train", "test", "validation") if self.first.spec.n_validation else ("train", "test")

  @property
  def streamed(self) -> bool:
    """Batches come from the grain pipeline (not gathered from placed arrays)."""
    return self.first.config.data.pipeline == "grain"

  @property
  def augment_mode(self) -> str:  # sgdlab.data.augment
    return augment.mode(self.first.config.data, self.first.spec.input_shape)

  @property
  def augmented(self) -> bool:  # the feed carries each example's draw to the device
    return augment.on_device(self.augment_mode)

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
      feed = dict(idx=struct((*lead, steps, k), jnp.int32), mask=struct((steps, k), jnp.float32))
    else:
      spec = [None] * (len(lead) + 1) + [step.DATA]
      feed = dict(x=struct((*lead, steps, k, *shape), self.first.spec.dtype, *spec),
                  y=struct((*lead, steps, k), jnp.int32, *spec),
                  mask=struct((steps, k), jnp.float32, None, step.DATA))
    if self.augmented:  # int32 per example, placed as its index (or label) is
      feed["draw"] = feed["y" if self.streamed else "idx"]
    return feed

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

  def data_keys(self, order_key: Callable[[int], jax.Array] = pipeline.data_order_key
                ) -> jax.Array:
    keys = [order_key(m.config.seed) for m in self.members]
    return keys[0] if not self.population else jnp.stack(keys)

  def order_fn(self) -> Callable[[jax.Array, jax.Array], pipeline.Feed]:
    """Jitted `order(data_keys, epoch) -> feed` of an epoch: idx [P?, steps, k], mask."""
    c = self.first
    n, k, seq_len = c.spec.n_train, c.batch_size, c.spec.seq_len

    def order(key, epoch):
      feed = pipeline.batch_order(n, k, jax.random.fold_in(key, epoch),
                                 drop_remainder=c.config.drop_remainder)
      if seq_len:  # windows -> their starts, from this epoch's offset
        feed["idx"] = text.window_starts(feed["idx"], text.epoch_offset(key, epoch, seq_len),
                                         seq_len, c.spec.train_tokens)
      if self.augment_mode != "none":  # host modes: the stream reads them
        feed["draw"] = augment.draws(key, epoch, feed["idx"],
                                     host=not augment.on_device(self.augment_mode))
      return feed

    if self.population:
      each = jax.vmap(order, in_axes=(0, None))

      def order(keys, epoch):  # one mask for all: it depends on the position alone
        feed = each(keys, epoch)
        return dict(feed, mask=feed["mask"][0])

    return jax.jit(order)

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

    streamed, seq_len = self.streamed, self.first.spec.seq_len

    def advance(state, *data):
      *arrays, feed = data

      def body(state, feed_step):
        batch = dict(feed_step) if streamed else pipeline.gather(*arrays, feed_step, seq_len)
        batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        return train_step(state, augment.apply(batch, feed_step))

      return jax.lax.scan(body, state, feed)

    if self.population:
      feed_axes = {key: None if key == "mask" else 0 for key in self.feed_structs(1)}
      axes = (0, feed_axes) if streamed else (0, None, None, feed_axes)
      advance = jax.vmap(advance, in_axes=axes)

    def advance_and_check(state, *data):
      state, metrics = advance(state, *data)
      return state, metrics, step.all_finite((state.params, state.opt_state))

    return jax.jit(advance_and_check)

  def probe_fn(self) -> Callable[..., step.Metrics]:
    """Jitted `probe(state, x, y, feed) -> per-batch noise norms`: the train step on each
    of the feed's batches at the SAME state, every update dropped (the noise probe,
    config.noise_probe_batches; `step.norms_at_fixed_state`)."""
    batch_sharding = NamedSharding(self.mesh, P(step.DATA))
    seq_len = self.first.spec.seq_len

    def probe(state, x, y, feed):
      def batch_of(feed_step):
        batch = jax.lax.with_sharding_constraint(pipeline.gather(x, y, feed_step, seq_len),
                                                 batch_sharding)
        return augment.apply(batch, feed_step)

      return step.norms_at_fixed_state(self.train_step, state, batch_of, feed)

    if self.population:
      feed_axes = {key: None if key == "mask" else 0 for key in self.feed_structs(1)}
      probe = jax.vmap(probe, in_axes=(0, None, None, feed_axes))
    return jax.jit(probe)

  def sharpness_keys(self) -> list[str]:
    """The columns `sharpness_fn` returns."""
    c = self.first.config
    return ([f"hessian_eig_{i + 1}" for i in range(c.sharpness_top)] + ["directional_curvature"]
            + (["epsilon_sharpness"] if c.sharpness_epsilon else []))

  def sharpness_fn(self) -> Callable[..., dict[str, jax.Array]]:
    """Jitted `sharpness(state, x, y, feed) -> figures` at the state's parameters, on the
    feed's full batches (`step.training_loss`): the top config.sharpness_top Hessian
    eigenvalues by Lanczos, g'Hg/g'g, and with sharpness_epsilon > 0 the
    epsilon-sharpness; the same figures on any number of devices."""
    c, seq_len, scale = self.first.config, self.first.spec.seq_len, self.first.spec.scale
    sharding = NamedSharding(self.mesh, P(None, step.DATA))
    key = jax.random.PRNGKey(0)  # Lanczos' start: the same for every member and epoch
    keys, model = self.sharpness_keys(), models.for_curvature(self.model)

    def sharpness(state, x, y, feed):
      batches = jax.vmap(lambda f: pipeline.gather(x, y, f, seq_len))(feed)
      batches = jax.lax.with_sharding_constraint(batches, sharding)
      if not seq_len:
        batches = dict(batches, x=pipeline.unit_images(batches["x"], scale))
      loss_fn = functools.partial(step.training_loss, model, batches=batches,
                                  label_smoothing=c.label_smoothing)
      eigs = curvature.lanczos(loss_fn, state.params, c.sharpness_iterations, key,
                               top=c.sharpness_top)
      figures = [*eigs, curvature.directional_curvature(loss_fn, state.params)]
      if c.sharpness_epsilon:
        figures.append(curvature.epsilon_sharpness(loss_fn, state.params, key,
                                                   epsilon=c.sharpness_epsilon))
      return dict(zip(keys, figures, strict=True))

    if self.population:
      feed_axes = {key: None if key == "mask" else 0 for key in self.feed_structs(1)}
      sharpness = jax.vmap(sharpness, in_axes=(0, None, None, feed_axes))
    return jax.jit(sharpness)

  def eval_batch(self, n: int) -> int:
    """The evaluation batch for a split of n examples: config.eval_batch_size, at most n,
    rounded up to the device count (any batch gives the same sums)."""
    size = self.mesh.size
    return -(-min(self.first.config.eval_batch_size, n) // size) * size

  def evaluate_fn(self) -> Callable[[Any, jax.Array, jax.Array], step.Metrics]:
    """Jitted `evaluate(params, x, y) -> {loss, accuracy}` over a whole split, one scan
    (for text: every non-overlapping window of the split's tokens, from the start)."""
    batch_sharding = NamedSharding(self.mesh, P(step.DATA))
    eval_step, seq_len = self.eval_step, self.first.spec.seq_len

    def evaluate(params, x, y):
      n = (x.shape[0] - 1) // seq_len if seq_len else x.shape[0]
      feed = pipeline.batch_order(n, self.eval_batch(n), None)
      if seq_len:
        feed["idx"] = feed["idx"] * seq_len

      def body(totals, feed_step):
        batch = jax.lax.with_sharding_constraint(pipeline.gather(x, y, feed_step, seq_len),
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
  c, total_steps, schedule = first.config, first.total_steps, first.schedule

  def lr_fn(count, learning_rate, lr_decay):
    return optim.build_schedule(schedule, learning_rate, lr_decay, total_steps)(count)

  model = models.build(c.model, first.spec.num_classes, first.dtype, seq_len=first.spec.seq_len)
  tx = optim.optimizer(c.optimizer)
  make_step = functools.partial(step.make_train_step, model, tx, lr_fn, mesh,
                                accumulation_steps=first.accumulation_steps,
                                noise_scale=c.noise_scale, noise_groups=first.noise_groups,
                                bn_momentum=c.model.bn_momentum,
                                label_smoothing=c.label_smoothing)
  # uint8 pixels -> [0, 1]; text windows arrive as int32 tokens.
  scaled = ((lambda f: f) if first.spec.seq_len
            else functools.partial(pipeline.scaled_step, scale=first.spec.scale))
  return Program(members=members, mesh=mesh, model=model, tx=tx, lr_fn=lr_fn,
                 train_step=scaled(make_step(check_gradients=False)),
                 eval_step=scaled(step.make_eval_step(model, mesh)),
                 checked_step=scaled(make_step()))


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member(tree: Any, i: int) -> Any:
  """Member i of a stacked population tree."""
  return jax.tree.map(lambda a: a[i], tree)
