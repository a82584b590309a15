"""Fixed-k plans: how to run a batch size k whose step does not fit, as fast as possible.

k is the experiment's variable, so nothing here changes it (shrinking k until the step
fits would change the experiment). A plan is a micro-batch per device (k / (n_devices *
micro-batch) accumulation steps), remat or not, and a compute dtype. Each plan's bytes
come from compiling the very accumulated step the trainer runs (`Estimator`), so the
plan chosen is what runs; its cost is predicted from XLA's cost analysis:

  seconds per update = steps * (micro-step FLOPs / FLOP rate[dtype] + bytes / bandwidth)
                       + the update's FLOPs / rate + its bytes / bandwidth

with the micro-step compiled on its own: `cost_analysis()` counts a scan body once, so
the accumulated program would report one micro-step and rank maximal accumulation
cheapest. FLOP rates (per dtype) and memory bandwidth are measured on this machine's
device once per process. Memory grows with the micro-batch, so each (remat, dtype)
family is bisected for its largest micro-batch that fits; of every plan compiled on
the way that fits, the cheapest wins.

The prediction reads compiled programs, not timings, so a busy machine plans as an idle
one does but for the two rates measured at start (timing every plan would not give
that), and it cannot see caches: on a 2-core CPU it ranks the CNN's micro-batch 500
first at k=4000, which measured 0.73x the speed of micro-batch 50
(experiments/benchmark_accumulation.py). Give microbatch_size explicitly where a
measurement says better.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from sgdlab.config import Resolved
from sgdlab.config.resolve import DTYPES as config_dtypes
from sgdlab.errors import ConfigError
from sgdlab.memory.budget import Budget, device_budget
from sgdlab.memory.estimator import Estimator, batch_struct
from sgdlab.memory.search import check_fixed_parts
from sgdlab.units import format_bytes
from sgdlab.train import step
from sgdlab.data.pipeline import replicated_structs
from sgdlab.train.program import build_program

DTYPES = tuple(d for d in config_dtypes if d != "auto")  # what dtype="auto" searches


@dataclasses.dataclass(frozen=True)
class Plan:
  """One way to run k: what it needs per device and what it is predicted to cost."""

  microbatch_size: int  # per device
  accumulation_steps: int
  remat: bool
  dtype: str
  bytes: int  # per device: the trainer's step at k with this plan, data and reserve
  fits: bool
  seconds: float | None = None  # predicted per optimizer update (plans that fit)
  note: str = ""

  def fields(self) -> dict[str, Any]:
    """The config fields that select this plan."""
    return {"microbatch_size": self.microbatch_size if self.accumulation_steps > 1 else 0,
            "dtype": self.dtype, "model.remat": self.remat}


@dataclasses.dataclass(frozen=True)
class Rates:
  """What this machine's device sustains: matmul FLOP/s per dtype, elementwise bytes/s."""

  device: str
  flops: dict[str, float]
  bandwidth: float

  def seconds(self, cost: dict[str, float], dtype: str) -> float:
    return cost["flops"] / self.flops[dtype] + cost["bytes accessed"] / self.bandwidth


@dataclasses.dataclass
class PlanReport:
  """The plans considered for one k, the one chosen, and why."""

  k: int
  n_devices: int
  target: str
  budget: Budget
  rates: Rates
  plans: list[Plan]
  chosen: Plan
  compiles: int
  search_seconds: float

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["budget"] = dict(dataclasses.asdict(self.budget), usable=self.budget.usable)
    return d

  def table(self) -> str:
    b, r = self.budget, self.rates
    rates = ", ".join(f"{d} {v / 1e9:.0f} GFLOP/s" for d, v in r.flops.items())
    lines = [f"k={self.k} fixed, {self.n_devices} device(s): per-device batch "
             f"{self.k // self.n_devices}; budget {format_bytes(b.bytes)} ({b.source}), usable "
             f"{format_bytes(b.usable)}; target {self.target}",
             f"measured on {r.device}: {rates}, memory {r.bandwidth / 1e9:.1f} GB/s  "
             f"[{self.compiles} compiles, {self.search_seconds:.1f}s]", "",
             f"  {'micro-batch':>11} {'accum':>6} {'remat':>5} {'dtype':>8} {'bytes/device':>12} "
             f"{'fits':>4} {'predicted s/update':>18}"]
    for p in self.plans:
      mark = "*" if p == self.chosen else " "
      cost = f"{p.seconds:.4f}" if p.seconds is not None else "-"
      lines.append(f"{mark} {p.microbatch_size:>11} {p.accumulation_steps:>6} "
                   f"{'yes' if p.remat else 'no':>5} {p.dtype:>8} {format_bytes(p.bytes):>12} "
                   f"{'yes' if p.fits else 'no':>4} {cost:>18}" + (f"  {p.note}" if p.note else ""))
    lines.append(f"chosen (*): micro-batch {self.chosen.microbatch_size} x "
                 f"{self.chosen.accumulation_steps} accumulation steps, remat "
                 f"{'on' if self.chosen.remat else 'off'}, {self.chosen.dtype}")
    return "\n".join(lines)


def divisors(n: int, unit: int = 1) -> list[int]:
  """The micro-batch candidates: multiples of unit that divide n, ascending."""
  return [d for d in range(unit, n + 1, unit) if n % d == 0]


def largest_fitting(candidates: Sequence[int], fits: Any) -> int | None:
  """The largest candidate (ascending) with fits(candidate), when fitting is monotone:
  the top and the bottom first (accumulation may be unneeded, or nothing may fit), then
  bisection between a fitting and a failing one."""
  if fits(candidates[-1]):
    return candidates[-1]
  if not fits(candidates[0]):
    return None
  lo, hi = 0, len(candidates) - 1
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(candidates[mid]) else (lo, mid)
  return candidates[lo]


@functools.lru_cache(maxsize=None)
def _measure_rates(device: jax.Device) -> Rates:
  def best(fn, *args, reps=5):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times.append(time.perf_counter() - t0)
    return min(times)

  n = 1024 if device.platform == "cpu" else 8192
  flops = {}
  for dtype in DTYPES:
    a = jax.device_put(jnp.ones((n, n), dtype), device)
    flops[dtype] = 2 * n ** 3 / best(jax.jit(lambda a: a @ a), a)
  m = 1 << (24 if device.platform == "cpu" else 28)
  x = jax.device_put(jnp.ones((m,), jnp.float32), device)
  bandwidth = 2 * 4 * m / best(jax.jit(lambda x: x * 1.5 + 1.0), x)
  return Rates(str(device.device_kind), flops, bandwidth)


def measure_rates(mesh: Mesh) -> Rates:
  """This machine's rates (measured once per process and device)."""
  return _measure_rates(mesh.devices.flat[0])


def _cost(compiled: Any) -> dict[str, float]:
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return {key: float(analysis.get(key, 0.0)) for key in ("flops", "bytes accessed")}


class _Costs:
  """Predicted seconds per update of a plan, from its micro-step and update programs."""

  def __init__(self, resolved: Resolved, mesh: Mesh, rates: Rates):
    self.resolved, self.mesh, self.rates = resolved, mesh, rates
    self.compiles = 0
    self._update: dict[str, float] | None = None

  def seconds(self, plan: Plan) -> float:
    n = self.mesh.size
    # XLA's own convolutions: the same FLOPs as the CPU's im2col path, which runs its
    # kernel gradient as a scan that cost analysis would count once.
    micro = build_program(self.resolved.with_fields(**{
        **plan.fields(), "microbatch_size": 0, "batch_size": n * plan.microbatch_size,
        "model.conv_impl": "xla"}), self.mesh)
    state = replicated_structs(micro.abstract_state(), self.mesh)
    batch = batch_struct(n * plan.microbatch_size, self.resolved.spec.input_shape, self.mesh,
                         seq_len=self.resolved.spec.seq_len)
    grads = jax.jit(step.make_grad_fn(micro.model, self.mesh)).lower(state.params, batch)
    self.compiles += 1
    micro_cost = _cost(grads.compile())
    if self._update is None:
      update = functools.partial(step.apply_update, micro.tx, micro.lr_fn)
      self.compiles += 1
      self._update = _cost(jax.jit(update).lower(state, state.params).compile())
    return (plan.accumulation_steps * self.rates.seconds(micro_cost, plan.dtype)
            + self.rates.seconds(self._update, "float32"))


def _choose(plans: list[Plan], estimators: dict, k: int, budget: Budget) -> Plan:
  """The fastest plan whose trainer epoch program fits too (plans that fail it are
  marked in `plans`); ConfigError when none does."""
  choices = sorted((p for p in plans if p.seconds is not None),
                   key=lambda p: (p.seconds, p.remat, -p.microbatch_size))
  for p in choices:
    # The trainer runs the step inside its epoch scan: that program must fit too.
    need = estimators[(p.microbatch_size, p.remat, p.dtype)].trainer_total(k)
    if need <= budget.usable:
      return p
    plans[plans.index(p)] = dataclasses.replace(p, fits=False, bytes=need,
                                                note="the trainer's epoch program needs more")
  smallest = min(plans, key=lambda p: p.bytes)
  raise ConfigError("memory_budget", budget.value,
                    f"a larger budget: no plan for k={k} fits; the smallest (micro-batch "
                    f"{smallest.microbatch_size}) needs {format_bytes(smallest.bytes)} per "
                    f"device, and {format_bytes(budget.usable)} is usable")


def plan_microbatch(resolved: Resolved, budget: Budget | None = None, *,
                    mesh: Mesh | None = None, target: str | None = None) -> PlanReport:
  """The plans for resolved's fixed k, and the one with the least predicted time per
  update among those that fit. microbatch_size="auto" searches micro-batches and remat;
  dtype="auto" searches float32 and bfloat16; fields given are kept.

  Raises ConfigError when no plan fits (not even a micro-batch of one example).
  """
  t0 = time.perf_counter()
  mesh = step.make_mesh() if mesh is None else mesh
  c = resolved.config
  budget = budget or device_budget(mesh, c.memory_budget, c.memory_headroom)
  local = resolved.per_device_batch
  if c.microbatch_size == "auto":
    # Micro-batches the noise scale's groups tile (noise_groups given).
    candidates = divisors(local, (int(c.noise_groups) or 1) if c.noise_scale else 1)
    remats = (False, True)
  else:
    candidates, remats = [int(c.microbatch_size) or local], (bool(c.model.remat),)
  dtypes = DTYPES if c.dtype == "auto" else (c.dtype,)
  rates = measure_rates(mesh)
  costs = _Costs(resolved, mesh, rates)
  plans, estimators, bases = [], {}, []
  for dtype in dtypes:
    for remat in remats:
      family = resolved.with_fields(dtype=dtype, microbatch_size=0, **{"model.remat": remat})
      base = Estimator(family, mesh, target=target)
      check_fixed_parts(base, budget)  # nothing to plan when these alone do not fit
      bases.append(base)
      probed: dict[int, Plan] = {}

      def fits(mb: int) -> bool:
        if mb not in probed:
          plan = Plan(mb, local // mb, remat, dtype, 0, False)
          est = Estimator(family.with_fields(**plan.fields()), mesh, target=base.target,
                          eval_from=base)
          estimators[(mb, remat, dtype)] = est
          total = est.total(resolved.batch_size)
          probed[mb] = dataclasses.replace(plan, bytes=total, fits=total <= budget.usable)
        return probed[mb].fits

      largest_fitting(candidates, fits)
      plans += sorted((dataclasses.replace(p, seconds=costs.seconds(p)) if p.fits else p
                       for p in probed.values()), key=lambda p: -p.microbatch_size)
  chosen = _choose(plans, estimators, resolved.batch_size, budget)
  return PlanReport(k=resolved.batch_size, n_devices=mesh.size, target=base.target,
                    budget=budget, rates=rates, plans=plans, chosen=chosen,
                    compiles=sum(e.compiles for e in [*bases, *estimators.values()])
                    + costs.compiles,
                    search_seconds=time.perf_counter() - t0)


def apply(resolved: Resolved, report: PlanReport) -> Resolved:
  """resolved with the chosen plan's fields (checked as resolve would)."""
  return resolved.with_fields(**report.chosen.fields())
