"""The training loop: a Run's epochs -> one History per member. Every training run uses it.

The trainer, population training, trial mode, the studies and the benchmarks all come
here. Per epoch: the Run of the epoch's k (`Run.for_epoch`: itself unless
config.batch_size_schedule changes k), `Run.advance` over the epoch's order (one call for the whole epoch, or
`steps_per_call` steps per call), one host sync, divergence per member, the epoch's row.
What else happens between calls and at an epoch's end (held-out evaluations, the noise
probe, live results, evaluation steps and the target, checkpoints) is a small piece
(`sgdlab.train.pieces`) the loop calls; a new per-epoch measurement is one more piece.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import jax
import numpy as np
from absl import logging

from sgdlab import noise
from sgdlab.config import batch_schedule
from sgdlab.results.history import History
from sgdlab.train import checkpoint as checkpoint_lib
from sgdlab.train import pieces as pieces_lib
from sgdlab.train import records
from sgdlab.train.pieces import Loop, Piece, Target

__all__ = ["Piece", "Target", "chunks", "run_loop"]


def chunks(n: int, size: int, *, binary: bool = True) -> list[int]:
  """Call lengths covering n steps: whole calls of `size`, then the rest as powers of two
  (binary: any evaluation schedule needs few compiled lengths) or as one call (a run cut
  by max_steps alone, e.g. a memory trial, runs one program as compile mode assumes)."""
  out = [size] * (n // size)
  rest = n % size
  if not binary:
    return out + ([rest] if rest else [])
  return out + [1 << b for b in reversed(range(rest.bit_length())) if rest >> b & 1]


def run_loop(run, *, checkpoint_dir: str | None = None, eval_steps: Sequence[int] = (),
             target: Target | None = None, max_steps: int | None = None,
             on_epoch: Callable[[int, History], None] | None = None,
             pieces: Sequence[Piece] = ()) -> list[History]:
  """Train every member of `run` (a `sgdlab.train.run.Run`) to its last epoch, its
  divergence, its target or max_steps; one History per member, with its final state in
  `History.state`.

  on_epoch(member, history) is called whenever a member's history gains an epoch row,
  and once per member after a resume (its history is then the checkpoint's). `pieces`
  are further measurements, called after the held-out evaluations and the noise probe.
  """
  loop, saver = _start(run, checkpoint_dir)
  config = run.members[0].config
  chain: list[Piece] = [pieces_lib.HeldOut()]
  chain += [pieces_lib.NoiseProbe()] if config.noise_probe_batches else []
  chain += [pieces_lib.Sharpness()] if config.sharpness_batches else []
  chain += list(pieces) + ([pieces_lib.Live(on_epoch)] if on_epoch is not None else [])
  chain += [pieces_lib.Evaluations(eval_steps, target)]
  chain += [pieces_lib.Checkpoints(saver)] if saver is not None else []
  for piece in chain:
    piece.begin(loop)
  for epoch in range(loop.first_epoch, config.num_epochs):
    loop.epoch, loop.run = epoch, run.for_epoch(epoch)
    done = _epoch(loop, chain, max_steps)
    if not loop.live or (max_steps is not None and loop.first_step + done >= max_steps):
      break
  for piece in chain:
    piece.close(loop)
  for m, (history, member) in enumerate(zip(loop.histories, run.members)):
    records.finish(history, member.config, loop.member(loop.state, m))
  return loop.histories


def _start(run, checkpoint_dir: str | None
           ) -> tuple[Loop, checkpoint_lib.Checkpointer | None]:
  """Fresh histories and state, or those of the newest readable checkpoint."""
  program, members = run.program, run.members
  config = members[0].config
  loop = Loop(run, [records.new_history(m, program.splits, run.compile_time) for m in members],
              [noise.NoiseEMA(m.config.noise_ema) if m.config.noise_scale else None
               for m in members], run.init_state())
  saver = None
  if checkpoint_dir and config.checkpoint_every_epochs:
    saver = checkpoint_lib.Checkpointer(checkpoint_dir, config.checkpoint_every_epochs)
    restored = saver.restore(loop.state, run.stream)
    if restored is not None:
      loop.state, loop.first_epoch = restored.state, restored.epoch
      for history, saved, ema in zip(loop.histories, restored.members, loop.emas):
        checkpoint_lib.resume_history(history, saved, ema)
      logging.info("%s | resumed from the checkpoint at epoch %d", loop.histories[0].name,
                   loop.first_epoch)
  loop.live = [m for m, h in enumerate(loop.histories) if not h.diverged and h.reached is None]
  return loop, saver


def _epoch(loop: Loop, chain: Sequence[Piece], max_steps: int | None) -> int:
  """One epoch (or its part up to max_steps); the steps it ran."""
  start = time.perf_counter()
  per_epoch = loop.run.program.steps_per_epoch
  end = per_epoch if max_steps is None else min(per_epoch, max_steps - loop.first_step)
  stops = sorted(set().union(*(p.stops(loop, end) for p in chain)) | {end})
  steps_before = loop.per_member(loop.state.step)
  started = list(loop.live)
  parts, done = _advance(loop, chain, stops)
  step_metrics = _concat(jax.device_get(parts), population=loop.run.program.population)
  first = loop.run.program.first
  if batch_schedule.is_scheduled(first.config):  # k of every step, into the History
    step_metrics["batch_size"] = np.full_like(step_metrics["lr"], first.batch_size)
  going_on = _settle(loop, started, step_metrics, steps_before, whole=done == per_epoch)
  if done == per_epoch:
    if going_on:
      _record(loop, chain, going_on, step_metrics, start)
    for piece in chain:
      going_on = piece.after_epoch(loop, going_on)
  loop.live = going_on
  return done


def _advance(loop: Loop, chain: Sequence[Piece], stops: list[int]) -> tuple[list, int]:
  """Train to each stop in turn, calling the pieces at the stops inside the epoch."""
  run, per_epoch = loop.run, loop.run.program.steps_per_epoch
  binary = any(p.splits_calls for p in chain)
  done, parts = 0, []
  for stop in stops:
    for n in chunks(stop - done, run.program.steps_per_call, binary=binary):
      loop.state, metrics = run.advance(loop.state, run.feed(loop.epoch, done, n))
      parts.append(metrics)
      done += n
      if run.block_each_call:
        jax.block_until_ready(loop.state.step)
    if stop < per_epoch:
      for piece in chain:
        piece.at_stop(loop, loop.first_step + stop)
      if not loop.live:
        break
  return parts, done


def _settle(loop: Loop, started: list[int], step_metrics: dict[str, np.ndarray],
            steps_before: np.ndarray, *, whole: bool) -> list[int]:
  """Record what ended inside the epoch (a divergence, a target reached, a max_steps cut);
  the members that trained the whole epoch and go on."""
  diverged_at = loop.per_member(loop.state.diverged_at)
  going_on = []
  for m in started:
    history, ema, mine = loop.histories[m], loop.emas[m], loop.member(step_metrics, m)
    if diverged_at[m] >= 0:
      records.record_divergence(history, mine, epoch=loop.epoch,
                                steps_before=int(steps_before[m]),
                                diverged_at=int(diverged_at[m]), ema=ema)
    elif m not in loop.live:  # reached its target inside the epoch: its steps until then
      kept = history.reached - loop.first_step
      records.append_steps(history, {k: v[:kept] for k, v in mine.items()}, ema)
    elif not whole:  # stopped inside the epoch (max_steps): steps, no row
      records.append_steps(history, mine, ema)
    else:
      going_on.append(m)
  return going_on


def _record(loop: Loop, chain: Sequence[Piece], going_on: list[int],
            step_metrics: dict[str, np.ndarray], start: float) -> None:
  """The pieces' measurements at the epoch's end, then each member's row."""
  figures: dict[int, dict[str, float]] = {m: {} for m in going_on}
  for piece in chain:
    for m, measured in piece.measure(loop, going_on).items():
      figures[m].update(measured)
  wall = time.perf_counter() - start
  members = loop.run.members
  for m in going_on:
    records.record_epoch(loop.histories[m], members[m].config, loop.epoch,
                         loop.member(step_metrics, m), figures[m], wall=wall,
                         n_train=members[m].spec.n_train, ema=loop.emas[m])
  if loop.run.program.population:
    logging.info("population of %d | epoch %d/%d | %d going on | %.2fs %.0f member-ex/s",
                 len(members), loop.epoch + 1, members[0].config.num_epochs, len(going_on),
                 wall, len(going_on) * members[0].spec.n_train / wall)


def _concat(parts: list[dict[str, np.ndarray]], *, population: bool) -> dict[str, np.ndarray]:
  axis = 1 if population else 0
  return {k: np.concatenate([p[k] for p in parts], axis=axis) for k in parts[0]}
