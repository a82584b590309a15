"""The largest batch size that fits: powers of two, then the exact k, by compiling.

Search: powers of two (times the device count) upward, each jump predicted by an
affine fit of bytes in k and certified by compiling the boundary pair; then the exact
largest k between them, by interpolation with a bisection fallback. Finally the
trainer's own programs (its advance scan and its evaluation scan) are compiled at the
answer, and the answer moves down if they need more than the step. Trial mode
(`sgdlab.memory.trials`) is the manual procedure, one child process per trial.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from sgdlab.config import Resolved, resolve
from sgdlab.errors import ConfigError
from sgdlab.memory.budget import Budget, device_budget
from sgdlab.memory.estimator import Estimator, Layer, layer_table
from sgdlab.units import format_bytes
from sgdlab.train import step

@dataclasses.dataclass
class FitReport:
  """The answer for one config and budget; `to_dict` is what fit.json holds."""

  config_name: str
  input_shape: tuple[int, ...]
  n_devices: int
  target: str
  budget: Budget
  largest_power_of_two: int
  largest_k: int | None
  probes: dict[int, int]  # k -> per-device bytes
  breakdown: dict[str, int]  # at largest_k (or the power of two when not exact)
  layers: list[Layer]
  eval_batch_size: int
  trainer_bytes: int | None  # the trainer's epoch + eval programs at the chosen k
  notes: list[str]
  search_seconds: float
  compiles: int
  slope_bytes_per_example: float  # per device, per example on that device

  @property
  def chosen(self) -> int:
    return self.largest_k or self.largest_power_of_two

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["budget"] = dict(dataclasses.asdict(self.budget), usable=self.budget.usable)
    d["probes"] = [dict(k=k, bytes=b, fits=b <= self.budget.usable)
                   for k, b in sorted(self.probes.items())]
    return d

  def table(self) -> str:
    """A plain-text report: the answer, the probes, the breakdown and the layers."""
    b = self.budget
    lines = [f"budget per device: {format_bytes(b.bytes)} ({b.source}); usable "
             f"{format_bytes(b.usable)} after {b.headroom:.0%} headroom; target {self.target}",
             f"input {self.input_shape}, {self.n_devices} device(s): largest power of two "
             f"k={self.largest_power_of_two}" +
             (f", largest k={self.largest_k}" if self.largest_k else "") +
             f"  [{self.compiles} compiles, {self.search_seconds:.1f}s]", "",
             f"{'k':>8}  {'bytes/device':>12}  fits"]
    lines += [f"{k:>8}  {format_bytes(v):>12}  {'yes' if v <= b.usable else 'no'}"
              for k, v in sorted(self.probes.items())]
    lines += ["", f"breakdown at k={self.chosen}:"]
    lines += [f"  {name:<48} {format_bytes(v):>12}" for name, v in self.breakdown.items()]
    lines.append(f"  {'total':<48} {format_bytes(sum(self.breakdown.values())):>12}")
    wn = max([12] + [len(l.name) for l in self.layers])
    wk = max([8] + [len(l.kind) for l in self.layers])
    lines += ["", f"{'layer':<{wn}} {'kind':<{wk}} {'output':<16} {'params':>10} "
              f"{'act B/ex':>10} {'patch B/ex':>10}"]
    lines += [f"{l.name:<{wn}} {l.kind:<{wk}} {str(l.output_shape):<16} {l.params:>10,} "
              f"{l.activation_bytes:>10,} {l.workspace_bytes:>10,}" for l in self.layers]
    lines += [f"note: {n}" for n in self.notes]
    return "\n".join(lines)


def _affine_guess(points: list[tuple[int, int]], limit: int, fixed: int) -> float:
  """The k where bytes reach `limit`, on the line through the two largest points
  (through `fixed` at k=0 when only one point is known). inf when bytes do not grow.
  """
  points = sorted(points)[-2:]
  (k1, b1), (k2, b2) = ((0, fixed), points[0]) if len(points) == 1 else points
  slope = (b2 - b1) / (k2 - k1)
  return math.inf if slope <= 0 else k2 + (limit - b2) / slope


def powers_of_two(unit: int, cap: int) -> list[int]:
  """unit, 2 unit, 4 unit, ... up to cap: the candidates of both modes."""
  return [unit << j for j in range(64) if unit << j <= cap]


def check_fixed_parts(est: Estimator, budget: Budget) -> None:
  """ConfigError when what does not depend on k (parameters, optimizer state, the
  dataset, the CPU reserve) or the evaluation alone leaves no room under the budget."""
  usable, config = budget.usable, est.config
  fixed = est.with_reserve(est.data_bytes + est.state_bytes)
  if fixed > usable:
    reserve = (f", the CPU runtime reserve ({format_bytes(fixed - est.data_bytes - est.state_bytes)})"
               if est.cpu else "")
    raise ConfigError("memory_budget", budget.value, "a larger budget. Nothing fits: the "
                      f"parameters ({format_bytes(est.param_bytes)}), optimizer state "
                      f"({format_bytes(est.state_bytes - est.param_bytes)}), the dataset "
                      f"on every device ({format_bytes(est.data_bytes)}){reserve} alone need "
                      f"{format_bytes(fixed)} per device, and {format_bytes(usable)} is usable")
  if est.with_reserve(est.data_bytes + est.eval_bytes()) > usable:
    raise ConfigError("eval_batch_size", config.eval_batch_size,
                      f"smaller: the eval step at k={est.eval_k} needs "
                      f"{format_bytes(est.with_reserve(est.data_bytes + est.eval_bytes()))} per "
                      f"device, and {format_bytes(usable)} is usable")


def find_batch_size(config: ml_collections.ConfigDict | Resolved,
                    budget: Budget | None = None, *, mesh: Mesh | None = None,
                    target: str | None = None, exact: bool = True,
                    check_trainer: bool = True,
                    estimator: Estimator | None = None) -> FitReport:
  """The largest power-of-two k (times the device count), and the exact largest k,
  whose compiled train step fits the budget; raises ConfigError when nothing fits.

  budget: default from config.memory_budget / memory_headroom (see `device_budget`).
  target: "cpu" or "accelerator" runtime terms; default the mesh's platform.
  check_trainer: also compile the trainer's epoch and eval programs at the answer
    and step down if they need more than the train step predicted.
  estimator: reuse one Estimator's compiled programs across budgets (same config).
  """
  t0 = time.perf_counter()
  mesh = (estimator.mesh if estimator else step.make_mesh()) if mesh is None else mesh
  resolved = (config if isinstance(config, Resolved) else
              resolve(config, n_devices=mesh.size))
  config = resolved.config
  budget = budget or device_budget(mesh, config.memory_budget, config.memory_headroom)
  est = estimator or Estimator(resolved, mesh, target=target)
  usable, notes, compiles_before = budget.usable, [], est.compiles
  _check_smallest(est, budget)
  lo, hi = _powers_search(est, usable)
  largest = None
  if exact:
    top = hi if hi is not None else est.cap
    fits_top = hi is None and est.total(top) <= usable
    largest = top if fits_top else _largest(est.total, usable, lo, top, est.unit)
  if (largest or lo) == est.cap or (hi is None and not exact):
    notes.append(f"candidates capped at the training set size ({est.spec.n_train}): "
                 f"k={largest or lo} fits and a larger k would exceed the dataset")
  trainer_bytes = None
  if check_trainer:
    lo, largest, chosen = _fit_trainer(est, budget, lo, largest, exact, notes)
    trainer_bytes = est.trainer_total(chosen)
  slope = _slope(est)  # before the breakdown, which may compile one more k
  return FitReport(
      config_name=config.name or config.model.name,
      input_shape=tuple(est.spec.input_shape), n_devices=mesh.size, target=est.target,
      budget=budget, largest_power_of_two=lo, largest_k=largest,
      probes={k: est.total(k) for k in sorted(est.probes)},
      breakdown=_breakdown(est, largest or lo, trainer_bytes),
      layers=layer_table(est.program(est.unit).model, est.abstract_state.params,
                         est.spec.input_shape, est.abstract_state.batch_stats,
                         jnp.int32 if est.spec.seq_len else jnp.float32),
      eval_batch_size=est.eval_k, trainer_bytes=trainer_bytes, notes=notes,
      search_seconds=time.perf_counter() - t0, compiles=est.compiles - compiles_before,
      slope_bytes_per_example=slope)


def _check_smallest(est: Estimator, budget: Budget) -> None:
  """ConfigError unless the smallest k (one example per device) fits."""
  if est.cap < est.unit:
    raise ConfigError("data.n_train", est.spec.n_train,
                      f"at least {est.unit} training examples (one per device)")
  check_fixed_parts(est, budget)
  if est.total(est.unit) > budget.usable:
    raise ConfigError("memory_budget", budget.value,
                      f"a larger budget. Nothing fits: even k={est.unit} needs "
                      f"{format_bytes(est.total(est.unit))} per device, and "
                      f"{format_bytes(budget.usable)} is usable")


def _powers_search(est: Estimator, usable: int) -> tuple[int, int | None]:
  """The largest power of two known to fit and the smallest known not to (None: none).

  Each jump goes to the largest power the affine fit of the train step's bytes predicts
  to fit; compiling it (and the next) certifies the answer."""
  step_limit = est.without_reserve(usable) - est.data_bytes
  powers = powers_of_two(est.unit, est.cap)
  lo, hi = est.unit, None
  while lo < powers[-1] and (hi is None or hi > 2 * lo):
    points = [(k, c.total) for k, c in est.probes.items()]
    guess = _affine_guess(points, step_limit, 2 * est.state_bytes)
    ceiling = hi // 2 if hi is not None else powers[-1]
    candidate = max([p for p in powers if 2 * lo <= p <= min(guess, ceiling)], default=2 * lo)
    lo, hi = (candidate, hi) if est.total(candidate) <= usable else (lo, candidate)
  return lo, hi


def _fit_trainer(est: Estimator, budget: Budget, lo: int, largest: int | None, exact: bool,
                 notes: list[str]) -> tuple[int, int | None, int]:
  """The trainer runs the step inside an epoch scan and evaluates in a scan: compile
  those at the answer too, and move down to where they fit when they need more.
  Returns the power of two, the exact k (None unless exact) and the k checked."""
  usable, chosen = budget.usable, largest or lo
  trainer_fits = lambda k: est.trainer_total(k) <= usable
  if trainer_fits(chosen):
    return lo, largest, chosen
  notes.append(f"k={chosen}: the trainer's programs need "
               f"{format_bytes(est.trainer_total(chosen))}, more than its train step; "
               "moved down to where they fit")
  # The scans need a few percent more than the step: try 7/8 first, then halve.
  upper, chosen = chosen, chosen * 7 // 8 // est.unit * est.unit
  while chosen >= est.unit and not trainer_fits(chosen):
    upper, chosen = chosen, chosen // 2 // est.unit * est.unit
  if chosen < est.unit:
    raise ConfigError("memory_budget", budget.value, "a larger budget. Nothing fits: "
                      f"the trainer's programs need {format_bytes(est.trainer_total(upper))}"
                      f" at k={upper}")
  if exact:
    chosen = _largest(est.trainer_total, usable, chosen, upper, est.unit)
  powers = powers_of_two(est.unit, est.cap)
  return max(p for p in powers if p <= chosen), (chosen if exact else None), chosen


def _slope(est: Estimator) -> float:
  """Bytes per example of the whole batch, from the first and last k compiled."""
  points = sorted((k, c.total) for k, c in est.probes.items())
  if len(points) < 2:
    return 0.0
  return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0]) * est.mesh.size


def _breakdown(est: Estimator, k: int, trainer_bytes: int | None) -> dict[str, int]:
  breakdown = est.breakdown(k)
  if trainer_bytes is not None and trainer_bytes > sum(breakdown.values()):
    breakdown["the trainer's epoch scan, beyond the train step"] = (
        trainer_bytes - sum(breakdown.values()))
  return breakdown


def _largest(total: Callable[[int], int], limit: int, lo: int, hi: int, unit: int) -> int:
  """The largest multiple of unit with total(k) <= limit, given lo fits and hi does not."""
  interpolate = True
  while hi - lo > unit:
    width = hi - lo
    if interpolate:
      # Bytes are close to affine in k: the interpolated k and its neighbour usually
      # settle it in two compiles.
      b_lo, b_hi = total(lo), total(hi)
      guess = lo + (limit - b_lo) * (hi - lo) / max(b_hi - b_lo, 1)
      candidate = min(max(int(guess) // unit * unit, lo + unit), hi - unit)
      ok = total(candidate) <= limit
      lo, hi = (candidate, hi) if ok else (lo, candidate)
      neighbour = candidate + unit if ok else candidate - unit
      if lo < neighbour < hi:
        lo, hi = (neighbour, hi) if total(neighbour) <= limit else (lo, neighbour)
      interpolate = hi - lo <= width // 2  # else bisect once: the worst case stays log
    else:
      candidate = (lo + hi) // 2 // unit * unit
      lo, hi = (candidate, hi) if total(candidate) <= limit else (lo, candidate)
      interpolate = True
  return lo


# -------------------------------------------------------------- image-size table


def with_image_size(config: ml_collections.ConfigDict, size: int) -> ml_collections.ConfigDict:
  """The config at size x size inputs: resized images, or a synthetic input of that side."""
  config = copy.deepcopy(config)
  if config.data.name == "synthetic":
    channels = tuple(config.data.synthetic_input_shape)[2:] or (1,)
    config.data.synthetic_input_shape = (size, size, *channels)
  else:
    config.data.image_size = size
  return config


def tradeoff(config: ml_collections.ConfigDict, sizes: Sequence[int], budget: Budget, *,
             mesh: Mesh | None = None, target: str | None = None,
             exact: bool = True) -> list[FitReport | ConfigError]:
  """find_batch_size at each image size: what resolution costs in batch size. A size
  where nothing fits is an answer too: its entry is the ConfigError saying why.
  """
  results = []
  for size in sizes:
    try:
      results.append(find_batch_size(with_image_size(config, size), budget, mesh=mesh,
                                     target=target, exact=exact))
    except ConfigError as e:
      results.append(e)
  return results


def tradeoff_table(sizes: Sequence[int], results: Sequence[FitReport | ConfigError]) -> str:
  header = (f"{'image':>6} {'params':>12} {'largest 2^j':>11} {'largest k':>9} "
            f"{'bytes at k':>12} {'bytes/example':>13}")
  rows = [header, "-" * len(header)]
  for size, r in zip(sizes, results):
    if isinstance(r, ConfigError):
      rows.append(f"{size:>6} nothing fits: {r.field} must be {r.valid}")
      continue
    rows.append(f"{size:>6} {sum(l.params for l in r.layers):>12,} "
                f"{r.largest_power_of_two:>11} {str(r.largest_k or '-'):>9} "
                f"{format_bytes(sum(r.breakdown.values())):>12} "
                f"{format_bytes(r.slope_bytes_per_example):>13}")
  return "\n".join(rows)


