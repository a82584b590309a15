r"""Compile mode vs trial mode: the same largest power-of-two k, and the time each takes.

  python experiments/benchmark_memory_search.py
  python experiments/benchmark_memory_search.py --memory_budget=3GiB --model=mlp

The Keras MNIST CNN on the bundled 28x28 digits, one device, a fixed budget (default
1.5 GiB of address space beyond what a fresh process maps after starting jax). Trial
mode is the manual procedure: start at 512, one child process per trial running real
train steps and an evaluation under RLIMIT_AS (a real out-of-memory boundary on CPU),
double while it runs. Compile mode compiles the train step per candidate k and runs
nothing. Prints both answers, both times and their ratio (target: >= 10x), and the
real memory trial mode touched. Several minutes on 2 CPU cores (trial mode runs real
steps of a CNN at k=1024 and beyond).
"""

from __future__ import annotations

import time

import jax
from absl import app, flags

from sgdlab import config as config_lib
from sgdlab.memory import budget as budget_lib
from sgdlab import units
from sgdlab.memory import search, trials
from sgdlab.train import step

_BUDGET = flags.DEFINE_string("memory_budget", "1536MiB", "Per-process budget beyond start-up.")
_MODEL = flags.DEFINE_enum("model", "cnn", ["cnn", "mlp"], "Model to fit.")
_START = flags.DEFINE_integer("trial_start", trials.TRIAL_START, "Trial mode's first k.")


def main(argv: list[str]) -> None:
  del argv
  config = config_lib.default_config()
  config.model.name = _MODEL.value
  budget = budget_lib.Budget(units.parse_bytes(_BUDGET.value), config.memory_headroom,
                         f"memory_budget={_BUDGET.value}", given=_BUDGET.value)
  mesh = step.make_mesh(jax.devices()[:1])

  t0 = time.perf_counter()
  quick = search.find_batch_size(config, budget, mesh=mesh, exact=False, check_trainer=False)
  compile_pow2_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  full = search.find_batch_size(config, budget, mesh=mesh)
  compile_full_s = time.perf_counter() - t0

  manual = trials.trial_search(config, budget_bytes=budget.bytes, start=_START.value)
  print(full.table())
  print()
  print(manual.table())
  touched = max((t.peak_bytes for t in manual.trials), default=0)
  same = quick.largest_power_of_two == manual.largest_power_of_two == full.largest_power_of_two
  print(f"""
{_MODEL.value} on 28x28 MNIST, one CPU device, budget {_BUDGET.value} beyond start-up
  compile mode, power of two only: k={quick.largest_power_of_two}  {compile_pow2_s:6.1f}s  \
({quick.compiles} compiles, nothing allocated)
  compile mode, exact k and the trainer's programs: k={full.largest_k} \
(2^j: {full.largest_power_of_two})  {compile_full_s:6.1f}s  ({full.compiles} compiles)
  trial mode from {_START.value}: k={manual.largest_power_of_two}  {manual.seconds:6.1f}s  \
({len(manual.trials)} child processes; up to {units.format_bytes(touched)} touched)
  same power of two: {'yes' if same else 'NO'}
  speed-up, power of two: {manual.seconds / compile_pow2_s:.1f}x; \
with exact k and trainer check: {manual.seconds / compile_full_s:.1f}x""")


if __name__ == "__main__":
  app.run(main)
