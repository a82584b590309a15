"""Compile mode against trial mode: the same largest power-of-two k, and the time each takes.

Trial mode is the manual procedure (`sgdlab.memory.trials.trial_search`: one child
process per trial running real train steps under RLIMIT_AS, doubling k while it runs);
compile mode (`sgdlab.memory.search.find_batch_size`) compiles the train step per
candidate k and runs nothing. The target: the same answer, >= 10x faster.
"""

from __future__ import annotations

import time

import jax
import ml_collections

from sgdlab import config as config_lib
from sgdlab import units
from sgdlab.memory import budget as budget_lib, search, trials
from sgdlab.train import step


def measure(settings: ml_collections.ConfigDict) -> bool:
  """The comparison a config describes (experiments/benchmark_memory_search.py),
  printed; whether both modes found the same power of two."""
  given, start = settings.memory_budget, settings.trial_start
  config = config_lib.default_config()
  config.model.name = settings.model
  budget = budget_lib.Budget(units.parse_bytes(given), config.memory_headroom,
                             f"memory_budget={given}", given=given)
  mesh = step.make_mesh(jax.devices()[:1])

  t0 = time.perf_counter()
  quick = search.find_batch_size(config, budget, mesh=mesh, exact=False, check_trainer=False)
  compile_pow2_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  full = search.find_batch_size(config, budget, mesh=mesh)
  compile_full_s = time.perf_counter() - t0

  manual = trials.trial_search(config, budget_bytes=budget.bytes, start=start)
  print(full.table())
  print()
  print(manual.table())
  touched = max((t.peak_bytes for t in manual.trials), default=0)
  same = quick.largest_power_of_two == manual.largest_power_of_two == full.largest_power_of_two
  print(f"""
{settings.model} on 28x28 MNIST, one CPU device, budget {given} beyond start-up
  compile mode, power of two only: k={quick.largest_power_of_two}  {compile_pow2_s:6.1f}s  \
({quick.compiles} compiles, nothing allocated)
  compile mode, exact k and the trainer's programs: k={full.largest_k} \
(2^j: {full.largest_power_of_two})  {compile_full_s:6.1f}s  ({full.compiles} compiles)
  trial mode from {start}: k={manual.largest_power_of_two}  {manual.seconds:6.1f}s  \
({len(manual.trials)} child processes; up to {units.format_bytes(touched)} touched)
  same power of two: {'yes' if same else 'NO'}
  speed-up, power of two: {manual.seconds / compile_pow2_s:.1f}x; \
with exact k and trainer check: {manual.seconds / compile_full_s:.1f}x""")
  return same
