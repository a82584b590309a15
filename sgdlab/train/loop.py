"""The training loop: a Run's epochs -> one History per member. Every training run uses it.

The trainer, population training, trial mode and the experiments all come here. Per
epoch: the data source's order, then `Run.advance` over it (one call for the whole
epoch, or `steps_per_call` steps per call), one host sync, divergence per member, an
evaluation, one log line, a checkpoint when due. Experiments may also ask for
evaluations at given steps inside epochs (`eval_steps`), to stop at a `Target`, or
to stop after `max_steps` (trial mode).

Checkpoints hold the (stacked) state and every member's history, so a run or a whole
population resumes bitwise.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging

from sgdlab import noise
from sgdlab.config import to_dict
from sgdlab.results import diagnostics
from sgdlab.results.history import History
from sgdlab.train import checkpoint as checkpoint_lib
from sgdlab.train import step
from sgdlab.train.run import Run


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


def chunks(n: int, size: int, *, binary: bool = True) -> list[int]:
  """Call lengths covering n steps: whole calls of `size`, then the rest as powers of two
  (binary: any evaluation schedule needs few compiled lengths) or as one call (a run cut
  by max_steps alone, e.g. a memory trial, runs one program as compile mode assumes)."""
  out = [size] * (n // size)
  rest = n % size
  if not binary:
    return out + ([rest] if rest else [])
  return out + [1 << b for b in reversed(range(rest.bit_length())) if rest >> b & 1]


def run_loop(run: Run, *, checkpoint_dir: str | None = None, eval_steps: Sequence[int] = (),
             target: Target | None = None, max_steps: int | None = None,
             on_epoch: Callable[[int, History], None] | None = None) -> list[History]:
  """Train every member of `run` to its last epoch, its divergence, its target or
  max_steps; one History per member, with its final state in `History.state`.

  on_epoch(member, history) is called whenever a member's history gains an epoch row,
  and once per member after a resume (its history is then the checkpoint's): live
  results that never run ahead of what a resumed run will reproduce.
  """
  program, members = run.program, run.members
  config = members[0].config
  steps_per_epoch, per_call = program.steps_per_epoch, program.steps_per_call
  histories = [History(name=m.name, config=to_dict(m.config), compile_time=run.compile_time)
               for m in members]
  emas = [noise.NoiseEMA(m.config.noise_ema) if m.config.noise_scale else None
          for m in members]
  state, first_epoch = run.init_state(), 0
  saver = None
  if checkpoint_dir and config.checkpoint_every_epochs:
    saver = checkpoint_lib.Checkpointer(checkpoint_dir, config.checkpoint_every_epochs)
    restored = saver.restore(state, run.stream)
    if restored is not None:
      state, first_epoch = restored.state, restored.epoch
      for history, saved, ema in zip(histories, restored.members, emas):
        checkpoint_lib.resume_history(history, saved, ema)
      logging.info("%s | resumed from the checkpoint at epoch %d", histories[0].name,
                   first_epoch)
      if on_epoch is not None:
        for m, history in enumerate(histories):
          on_epoch(m, history)
  live = [m for m, h in enumerate(histories) if not h.diverged and h.reached is None]
  evals = sorted(set(int(t) for t in eval_steps))
  eval_set = set(evals)
  for epoch in range(first_epoch, config.num_epochs):
    start = time.perf_counter()
    first_step = epoch * steps_per_epoch
    end = steps_per_epoch if max_steps is None else min(steps_per_epoch, max_steps - first_step)
    stops = sorted({t - first_step for t in evals if 0 < t - first_step < end} | {end})
    steps_before = _per_member(state.step, len(members))
    started = list(live)
    pos, parts = 0, []
    for stop in stops:
      for n in chunks(stop - pos, per_call, binary=bool(evals)):
        state, metrics = run.advance(state, run.feed(epoch, pos, n))
        parts.append(metrics)
        pos += n
        if run.block_each_call:
          jax.block_until_ready(state.step)
      # Evaluations inside the epoch: at the evaluation steps, and where max_steps stops a
      # run that has none (trial mode); a stop at max_steps is no extra chance at the target.
      at = first_step + stop
      if stop < steps_per_epoch and (at in eval_set or not evals):
        live = _evaluate_at(run, state, histories, live, at, target if at in eval_set else None)
        if not live:
          break
    step_metrics = _concat(jax.device_get(parts), population=program.population)
    diverged_at = _per_member(state.diverged_at, len(members))
    going_on = []
    for m in started:
      mine = program.member(step_metrics, m)
      if diverged_at[m] >= 0:
        record_divergence(histories[m], mine, epoch=epoch, steps_before=int(steps_before[m]),
                          diverged_at=int(diverged_at[m]), ema=emas[m])
      elif m not in live:  # reached its target inside the epoch: its steps until then
        kept = histories[m].reached - first_step
        _append_steps(histories[m], {k: v[:kept] for k, v in mine.items()}, emas[m])
      elif pos < steps_per_epoch:  # stopped inside the epoch (max_steps): steps, no row
        _append_steps(histories[m], mine, emas[m])
      else:
        going_on.append(m)
    if pos == steps_per_epoch and going_on:
      variables = step.eval_variables(state)
      evals_now = {s: jax.device_get(run.evaluate(variables, s)) for s in program.splits
                   if s != "train"}
      test = evals_now["test"]
      probed = jax.device_get(run.probe(state, epoch)) if config.noise_probe_batches else None
      wall = time.perf_counter() - start
      for m in going_on:
        record_epoch(histories[m], members[m].config, epoch,
                     program.member(step_metrics, m),
                     {s: program.member(r, m) for s, r in evals_now.items()},
                     wall=wall, n_train=members[m].spec.n_train, ema=emas[m],
                     probe=None if probed is None else program.member(probed, m))
        if on_epoch is not None:
          on_epoch(m, histories[m])
      if program.population:
        logging.info("population of %d | epoch %d/%d | %d going on | %.2fs %.0f member-ex/s",
                     len(members), epoch + 1, config.num_epochs, len(going_on), wall,
                     len(live) * members[0].spec.n_train / wall)
      # The target is checked at the evaluation steps, or at every epoch's end if none.
      if first_step + pos in eval_set or (target is not None and not evals):
        going_on = _evaluate_at(run, state, histories, going_on, first_step + pos, target,
                                test=test)
    live = going_on
    if saver is not None and pos == steps_per_epoch and saver.due(epoch + 1, config.num_epochs):
      saver.save(epoch + 1, state, histories, run.stream)
    if not live or (max_steps is not None and first_step + pos >= max_steps):
      break
  if saver is not None:
    saver.close()
  for m, (history, resolved) in enumerate(zip(histories, members)):
    finish(history, resolved.config, program.member(state, m))
  return histories


def _per_member(x: jax.Array, size: int) -> np.ndarray:
  return np.broadcast_to(np.asarray(jax.device_get(x)), (size,))


def _concat(parts: list[dict[str, np.ndarray]], *, population: bool) -> dict[str, np.ndarray]:
  axis = 1 if population else 0
  return {k: np.concatenate([p[k] for p in parts], axis=axis) for k in parts[0]}


def _evaluate_at(run: Run, state: Any, histories: list[History], live: list[int], at_step: int,
                 target: Target | None, test: dict | None = None) -> list[int]:
  """Record an evaluation after at_step steps (`History.evals`); the members going on."""
  diverged_at = _per_member(state.diverged_at, len(histories))
  language = run.program.first.spec.seq_len > 0
  splits = {"test"} | ({target.split} if target else set())
  results = {s: jax.device_get(run.evaluate(step.eval_variables(state), s)) if s != "test" or test is None
             else test for s in sorted(splits)}
  still = []
  for m in live:
    if diverged_at[m] >= 0:
      still.append(m)  # recorded as diverged at the epoch's end
      continue
    row = dict(step=at_step)
    for split, result in results.items():
      row.update(split_figures(split, run.program.member(result, m), language))
    for key, value in row.items():
      histories[m].evals.setdefault(key, []).append(value)
    if target is not None and target.reached(row[target.metric]):
      histories[m].reached = at_step
      continue
    still.append(m)
  return still


def record_divergence(history: History, step_metrics: dict[str, np.ndarray], *, epoch: int,
                      steps_before: int, diverged_at: int,
                      ema: noise.NoiseEMA | None) -> None:
  """Keep the epoch's steps up to and including the failing one; no epoch row."""
  kept = diverged_at - steps_before + 1
  _append_steps(history, {key: v[:kept] for key, v in step_metrics.items()}, ema)
  history.diverged = f"diverged at step {diverged_at + 1} (epoch {epoch + 1})"
  logging.warning("%s | %s", history.name, history.diverged)


def split_figures(split: str, result: dict[str, Any], language: bool) -> dict[str, float]:
  """<split>_loss and _accuracy; for a byte-level language model also perplexity and
  bits per byte (its loss is nats per token, and a token is a byte)."""
  loss = float(result["loss"])
  row = {f"{split}_loss": loss, f"{split}_accuracy": float(result["accuracy"])}
  if language:
    row[f"{split}_perplexity"] = float(np.exp(loss))
    row[f"{split}_bits_per_byte"] = loss / float(np.log(2.0))
  return row


def record_epoch(history: History, config: Any, epoch: int, step_metrics: dict[str, np.ndarray],
                 evaluated: dict[str, dict[str, Any]], *, wall: float, n_train: int,
                 ema: noise.NoiseEMA | None, probe: dict[str, np.ndarray] | None = None
                 ) -> None:
  """Append a finished epoch: its steps, its row of means and the figures of the held-out
  splits (test, and validation when held out), one log line. probe: the noise probe's
  per-batch norms at the epoch's final parameters (Run.probe)."""
  _append_steps(history, step_metrics, ema)
  language = config.data.name == "text"
  row = dict(epoch=epoch + 1, **diagnostics.epoch_means(step_metrics))
  if language:
    row["train_bits_per_byte"] = row["train_loss"] / float(np.log(2.0))
  for split in ("test", "validation"):
    if split in evaluated:
      row.update(split_figures(split, evaluated[split], language))
  row.update(lr=float(step_metrics["lr"][-1]), wall_time=wall, examples_per_sec=n_train / wall)
  if ema is not None:
    row["grad_sq"], row["trace_sigma"], row["noise_scale"] = ema.values()
  if probe is not None:  # batches of one permutation: the finite-n estimates
    stats = noise.probe_stats(probe, n_population=n_train)
    row.update(probe_grad_sq=stats.grad_sq, probe_trace_sigma=stats.trace_sigma,
               probe_noise_scale=stats.b_simple)
  for key, value in row.items():
    history.epochs.setdefault(key, []).append(value)
  logging.info("%s | epoch %d/%d | train loss %.4f acc %.4f |%s test loss %.4f acc %.4f%s | "
               "lr %.4g | %.2fs %.0f ex/s%s%s", history.name, epoch + 1, config.num_epochs,
               row["train_loss"], row["train_accuracy"],
               f" validation loss {row['validation_loss']:.4f} acc "
               f"{row['validation_accuracy']:.4f} |" if "validation_loss" in row else "",
               row["test_loss"], row["test_accuracy"],
               f" {row['test_bits_per_byte']:.3f} bits/byte" if language else "",
               row["lr"], wall, row["examples_per_sec"],
               f" | B_simple {row['noise_scale']:.1f}" if ema is not None else "",
               f" (probe {row['probe_noise_scale']:.1f})" if probe is not None else "")


def finish(history: History, config: Any, state: Any) -> History:
  """Diagnostics from the whole curve, and the final state."""
  history.diagnostics = diagnostics.diagnose(history.epochs, diverged=history.diverged,
                                             batch_size=int(config.batch_size),
                                             learning_rate=config.learning_rate)
  for note in history.diagnostics:
    logging.info("%s | %s", history.name, note)
  history.state = state
  return history


def _append_steps(history: History, step_metrics: dict[str, np.ndarray],
                  ema: noise.NoiseEMA | None) -> None:
  history.steps.setdefault("loss", []).extend(np.asarray(step_metrics["loss"]).tolist())
  history.steps.setdefault("lr", []).extend(np.asarray(step_metrics["lr"]).tolist())
  if ema is None:
    return
  grad_sq, trace = noise.online_estimates(step_metrics["g_small_sq"], step_metrics["g_big_sq"],
                                          step_metrics["b_small"], step_metrics["b_big"])
  full = np.asarray(step_metrics["full"]) > 0
  grad_sq, trace = np.where(full, grad_sq, np.nan), np.where(full, trace, np.nan)
  ema.update(grad_sq, trace)
  history.steps.setdefault("grad_sq", []).extend(grad_sq.tolist())
  history.steps.setdefault("trace_sigma", []).extend(trace.tolist())
