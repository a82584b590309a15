"""A run: a Program (sgdlab.train.program) with its data placed and its programs
compiled; what `sgdlab.train.loop` drives.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from absl import logging
from jax.sharding import Mesh

from sgdlab.config import Resolved
from sgdlab import data as data_lib
from sgdlab.data import Dataset, pipeline, stream
from sgdlab.data.pipeline import replicated_structs, slice_feed
from sgdlab.train import step
from sgdlab.train.program import Program, build_program


@dataclasses.dataclass
class Run:
  """A Program with its dataset placed on the devices, and its programs compiled."""

  program: Program
  dataset: Dataset | None  # None when streamed
  arrays: dict[str, jax.Array]  # x_train, y_train, x_test, y_test (x_, y_validation)
  data_keys: jax.Array
  compile_time: float = 0.0
  stream: stream.Stream | None = None  # the grain pipeline's training batches
  sources: dict[str, stream.ArraySource] = dataclasses.field(default_factory=dict)
  _epoch_order: tuple[int, pipeline.Feed] | None = dataclasses.field(default=None, repr=False)
  _probe_keys: jax.Array | None = dataclasses.field(default=None, repr=False)
  _sharpness_feed: pipeline.Feed | None = dataclasses.field(default=None, repr=False)
  _advance: dict = dataclasses.field(default_factory=dict, repr=False)
  _evaluate: dict = dataclasses.field(default_factory=dict, repr=False)
  _jitted: dict = dataclasses.field(default_factory=dict, repr=False)
  # k -> the Run of that phase of config.batch_size_schedule, shared by the phases.
  _phases: dict = dataclasses.field(default_factory=dict, repr=False)

  @property
  def members(self) -> tuple[Resolved, ...]:
    return self.program.members

  @property
  def block_each_call(self) -> bool:
    """Async multi-device dispatch can deadlock XLA:CPU's collectives: block per call."""
    mesh = self.program.mesh
    return mesh.size > 1 and mesh.devices.flat[0].platform == "cpu"

  def for_epoch(self, epoch: int) -> Run:
    """The Run that trains epoch `epoch`: this one, or with config.batch_size_schedule the
    phase of that epoch's k. A phase shares the placed data, the keys and the evaluation
    programs; its own epoch programs compile on their first call (once per k)."""
    members = [m.at_epoch(epoch) for m in self.members]
    k = members[0].batch_size
    if not self._phases:
      self._phases[self.program.first.batch_size] = self
    if k not in self._phases:
      program = build_program(members, self.program.mesh)
      phase = Run(program, self.dataset, self.arrays, self.data_keys, _phases=self._phases,
                  _evaluate=self._evaluate)
      phase._jitted.update(order=program.order_fn(), advance=program.advance_fn(),
                           evaluate=self._jitted["evaluate"])
      if program.streamed:  # the same sources, read in batches of this k
        phase.sources = self.sources
        _open_training_stream(phase)
      self._phases[k] = phase
      logging.info("epoch %d: k=%d (a program of its own, compiled on its first call)",
                   epoch + 1, k)
    return self._phases[k]

  def init_state(self) -> step.TrainState:
    return pipeline.replicate(self.program.init_state(), self.program.mesh)

  def order(self, epoch: int) -> pipeline.Feed:
    """The epoch's batch order (idx, mask), on the devices: both pipelines' order."""
    return self._jitted["order"](self.data_keys, jnp.int32(epoch))

  def host_order(self, epoch: int) -> dict:
    """The order on the host, for the grain pipeline to read by."""
    return jax.device_get(self.order(epoch))

  def feed(self, epoch: int, start: int, n: int) -> pipeline.Feed:
    """Steps [start, start + n) of an epoch, as `advance` takes them."""
    if self.stream is None:
      if self._epoch_order is None or self._epoch_order[0] != epoch:
        self._epoch_order = (epoch, self.order(epoch))
      return slice_feed(self._epoch_order[1], start, n)
    at = epoch * self.program.steps_per_epoch + start
    if self.stream.position != at:
      self.stream.seek(at)
    return pipeline.place_batches(self.stream.take(n), self.program.mesh, step.DATA,
                                  self.program.first.batch_size)

  def probe(self, state: step.TrainState, epoch: int) -> step.Metrics:
    """The noise probe at `state`: config.noise_probe_batches full batches of the
    epoch's probe permutation (its own key), the step's noise norms per batch."""
    if "probe" not in self._jitted:
      self._jitted["probe"] = self.program.probe_fn()
    if self._probe_keys is None:
      self._probe_keys = pipeline.replicate(self.program.data_keys(pipeline.probe_order_key),
                                            self.program.mesh)
    feed = slice_feed(self._jitted["order"](self._probe_keys, jnp.int32(epoch)), 0,
                      int(self.program.first.config.noise_probe_batches))
    return self._jitted["probe"](state, self.arrays["x_train"], self.arrays["y_train"], feed)

  def sharpness(self, state: step.TrainState) -> dict[str, jax.Array]:
    """The curvature figures at `state` (`Program.sharpness_fn`) on the first
    config.sharpness_batches full batches of one fixed permutation (its own key)."""
    if "sharpness" not in self._jitted:
      self._jitted["sharpness"] = self.program.sharpness_fn()
    if self._sharpness_feed is None:
      keys = pipeline.replicate(self.program.data_keys(pipeline.sharpness_order_key),
                                self.program.mesh)
      self._sharpness_feed = slice_feed(self._jitted["order"](keys, jnp.int32(0)), 0,
                                        int(self.program.first.config.sharpness_batches))
    return self._jitted["sharpness"](state, self.arrays["x_train"], self.arrays["y_train"],
                                     self._sharpness_feed)

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
    """Loss and accuracy of params over a whole split ("test", "train", "validation")."""
    if self.program.streamed:
      return self._evaluate_streamed(params, split)
    x, y = self.arrays[f"x_{split}"], self.arrays[f"y_{split}"]
    if split not in self._evaluate:
      self._evaluate[split] = self._jitted["evaluate"].lower(params, x, y).compile()
    return self._evaluate[split](params, x, y)

  def _evaluate_streamed(self, params: Any, split: str) -> step.Metrics:
    program, source = self.program, self.sources[split]
    mesh, data_cfg = program.mesh, program.first.config.data
    k = program.eval_batch(len(source))
    batches = stream.eval_batches(source, k, pipeline.process_columns(mesh, step.DATA, k),
                                  read_threads=data_cfg.read_threads, prefetch=data_cfg.prefetch)
    add = self._jitted.setdefault("eval_batch", program.eval_batch_fn())
    return pipeline.sum_batches(add, params, batches, mesh, step.DATA, k,
                                members=program.size if program.population else 0)

  def for_members(self, members: Sequence[Resolved]) -> Run:
    """The same compiled run for other members (other learning rates, seeds)."""
    program = dataclasses.replace(self.program, members=tuple(members))
    run = dataclasses.replace(self, program=program, _epoch_order=None, _probe_keys=None,
                              _sharpness_feed=None, _phases={},
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
    arrays = pipeline.replicate({f"{a}_{s}": dataset[f"{a}_{s}"] for s in program.splits
                                 for a in "xy"},
                                program.mesh)
    run = Run(program, dataset, arrays, keys)
  run._jitted.update(order=program.order_fn(), advance=program.advance_fn(),
                     evaluate=program.evaluate_fn())
  if not compile_now:
    return run
  t0 = time.perf_counter()
  state = replicated_structs(program.abstract_state(), program.mesh)
  run.compile(state, program.feed_structs(program.steps_per_call))
  if not program.streamed:
    run._evaluate["test"] = run._jitted["evaluate"].lower(
        step.eval_variables(state), run.arrays["x_test"], run.arrays["y_test"]).compile()
  run.compile_time = time.perf_counter() - t0
  return run


def _open_streams(run: Run) -> None:
  """The grain pipeline's sources (train, test) and the training stream, read by order."""
  program = run.program
  c = program.first.config
  run.sources.update({split: stream.open_split(c.data, split) for split in program.splits})
  _open_training_stream(run)


def _open_training_stream(run: Run) -> None:
  """The training stream over run.sources["train"], in batches of the run's k."""
  program = run.program
  c = program.first.config
  k, columns = program.first.batch_size, pipeline.process_columns(program.mesh, step.DATA,
                                                                  program.first.batch_size)
  logging.info("grain: process %d reads columns [%d, %d) of every batch of %d",
               jax.process_index(), columns.start, columns.stop, k)
  run.stream = stream.Stream(run.sources["train"], run.host_order, columns=columns,
                             steps_per_epoch=program.steps_per_epoch, num_epochs=c.num_epochs,
                             population=program.population, read_threads=c.data.read_threads,
                             prefetch=c.data.prefetch)

