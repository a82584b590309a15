"""What the loop does between calls and at an epoch's end, as small named pieces.

In the spirit of clu's periodic actions: the loop (`sgdlab.train.loop`) trains, settles
divergence and records rows; everything else is a `Piece` it calls at fixed points:

  begin(loop)                  once, after a resume (if any)
  stops(loop, end)             steps inside this epoch where it wants the loop to stop
  at_stop(loop, at)            at such a stop (after `at` steps in all)
  measure(loop, members)       at a whole epoch's end: figures for each member's row
                               (held-out splits, the noise probe, sharpness)
  after_epoch(loop, members)   after the rows: the members going on
  close(loop)                  after the last epoch

A new per-epoch measurement is one new Piece, passed to `run_loop(pieces=...)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np

from sgdlab import noise
from sgdlab.results.history import History
from sgdlab.train import checkpoint as checkpoint_lib
from sgdlab.train import records, step
from sgdlab.train.run import Run


@dataclasses.dataclass
class Loop:
  """A run in progress: what the pieces read and change."""

  run: Run
  histories: list[History]
  emas: list[noise.NoiseEMA | None]
  state: Any
  live: list[int] = dataclasses.field(default_factory=list)  # members going on
  epoch: int = 0
  first_epoch: int = 0  # > 0 after a resume
  held_out: dict[str, Any] = dataclasses.field(default_factory=dict)  # this epoch's end

  @property
  def first_step(self) -> int:
    """Updates before this epoch (k may change between epochs)."""
    return self.run.program.first.steps_before(self.epoch)

  def member(self, tree: Any, m: int) -> Any:
    return self.run.program.member(tree, m)

  def per_member(self, x: jax.Array) -> np.ndarray:
    return np.broadcast_to(np.asarray(jax.device_get(x)), (len(self.histories),))


class Piece:
  """A piece of the loop; each hook does nothing unless a subclass says otherwise."""

  splits_calls = False  # True: its stops need calls of few compiled lengths (`loop.chunks`)

  def begin(self, loop: Loop) -> None:
    pass

  def stops(self, loop: Loop, end: int) -> set[int]:
    return set()

  def at_stop(self, loop: Loop, at: int) -> None:
    pass

  def measure(self, loop: Loop, members: list[int]) -> dict[int, dict[str, float]]:
    return {}

  def after_epoch(self, loop: Loop, members: list[int]) -> list[int]:
    return members

  def close(self, loop: Loop) -> None:
    pass


@dataclasses.dataclass(frozen=True)
class Target:
  """Stop a member once an evaluation reaches `value` in `metric` (e.g. test_accuracy)."""

  metric: str  # "<split>_<loss|accuracy>", split "test", "train" or "validation"
  value: float

  @property
  def split(self) -> str:
    return self.metric.split("_")[0]

  def reached(self, value: float) -> bool:
    # In float32, as the metric was computed: 900 / 1000 is 0.9f, which is below 0.9.
    value, target = np.float32(value), np.float32(self.value)
    return bool(value >= target if self.metric.endswith("accuracy") else value <= target)


class HeldOut(Piece):
  """The held-out splits (test, and validation when held out) at every epoch's end."""

  def measure(self, loop: Loop, members: list[int]) -> dict[int, dict[str, float]]:
    run = loop.run
    variables = step.eval_variables(loop.state)
    loop.held_out = {s: jax.device_get(run.evaluate(variables, s)) for s in run.program.splits
                     if s != "train"}
    language = loop.run.members[0].config.data.name == "text"
    out = {}
    for m in members:
      out[m] = {}
      for split, result in loop.held_out.items():
        out[m].update(records.split_figures(split, loop.member(result, m), language))
    return out


class NoiseProbe(Piece):
  """B_simple at each epoch's final parameters from extra full batches of one permutation
  (`Run.probe`): finite-population estimates (McCandlish et al. 2018, appendix A)."""

  def measure(self, loop: Loop, members: list[int]) -> dict[int, dict[str, float]]:
    probed = jax.device_get(loop.run.probe(loop.state, loop.epoch))
    out = {}
    for m in members:
      stats = noise.probe_stats(loop.member(probed, m),
                                n_population=loop.run.members[m].spec.n_train)
      out[m] = dict(probe_grad_sq=stats.grad_sq, probe_trace_sigma=stats.trace_sigma,
                    probe_noise_scale=stats.b_simple)
    return out


class Sharpness(Piece):
  """The top Hessian eigenvalues, g'Hg/g'g and (optionally) epsilon-sharpness at each
  epoch's final parameters (`Run.sharpness`; Keskar et al. 2017, Cohen et al. 2021)."""

  def measure(self, loop: Loop, members: list[int]) -> dict[int, dict[str, float]]:
    c = loop.run.members[0].config
    if (loop.epoch + 1) % c.sharpness_every_epochs and loop.epoch + 1 < c.num_epochs:
      return {m: dict.fromkeys(loop.run.program.sharpness_keys(), float("nan"))
              for m in members}
    figures = jax.device_get(loop.run.sharpness(loop.state))
    return {m: {key: float(loop.member(v, m)) for key, v in figures.items()} for m in members}


class Live(Piece):
  """on_epoch(member, history) whenever a member's history gains an epoch row, and once
  per member after a resume: live results never ahead of what a resume reproduces."""

  def __init__(self, on_epoch: Callable[[int, History], None]):
    self.on_epoch = on_epoch

  def begin(self, loop: Loop) -> None:
    if loop.first_epoch:
      for m, history in enumerate(loop.histories):
        self.on_epoch(m, history)

  def after_epoch(self, loop: Loop, members: list[int]) -> list[int]:
    for m in members:
      self.on_epoch(m, loop.histories[m])
    return members


class Evaluations(Piece):
  """Evaluations at given global steps (`History.evals`) and the Target, checked at those
  steps, or at every epoch's end if none are given; where max_steps cuts a run that has
  no evaluation steps (trial mode), one evaluation there, which is no chance at the target."""

  def __init__(self, eval_steps: Sequence[int], target: Target | None):
    self.steps, self.target = set(int(t) for t in eval_steps), target
    self.splits_calls = bool(self.steps)

  def stops(self, loop: Loop, end: int) -> set[int]:
    return {t - loop.first_step for t in self.steps if 0 < t - loop.first_step < end}

  def at_stop(self, loop: Loop, at: int) -> None:
    if at in self.steps or not self.steps:
      loop.live = evaluate_at(loop, loop.live, at, self.target if at in self.steps else None)

  def after_epoch(self, loop: Loop, members: list[int]) -> list[int]:
    at = loop.first_step + loop.run.program.steps_per_epoch
    if members and (at in self.steps or (self.target is not None and not self.steps)):
      return evaluate_at(loop, members, at, self.target, test=loop.held_out.get("test"))
    return members


class Checkpoints(Piece):
  """Save the (stacked) state and every member's history when due: a run or a whole
  population resumes bitwise (`sgdlab.train.checkpoint`)."""

  def __init__(self, saver: checkpoint_lib.Checkpointer):
    self.saver = saver

  def after_epoch(self, loop: Loop, members: list[int]) -> list[int]:
    epochs = loop.run.members[0].config.num_epochs
    if self.saver.due(loop.epoch + 1, epochs):
      self.saver.save(loop.epoch + 1, loop.state, loop.histories, loop.run.stream)
    return members

  def close(self, loop: Loop) -> None:
    self.saver.close()


def evaluate_at(loop: Loop, members: list[int], at_step: int, target: Target | None,
                test: dict | None = None) -> list[int]:
  """Record an evaluation after at_step steps for each member; those going on (a member
  that diverged is kept: it is recorded as diverged at the epoch's end)."""
  run = loop.run
  diverged_at = loop.per_member(loop.state.diverged_at)
  language = run.program.first.spec.seq_len > 0
  splits = {"test"} | ({target.split} if target else set())
  results = {s: test if s == "test" and test is not None else
             jax.device_get(run.evaluate(step.eval_variables(loop.state), s))
             for s in sorted(splits)}
  still = []
  for m in members:
    if diverged_at[m] >= 0:
      still.append(m)
      continue
    row = dict(step=at_step)
    for split, result in results.items():
      row.update(records.split_figures(split, loop.member(result, m), language))
    records.record_eval(loop.histories[m], row)
    if target is not None and target.reached(row[target.metric]):
      loop.histories[m].reached = at_step
      continue
    still.append(m)
  return still
