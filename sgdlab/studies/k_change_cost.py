"""What a change of k between epochs costs (config.batch_size_schedule).

A run whose k changes trains each new k's epoch programs on first use, once. The cost
of a change is the change epoch's wall time beyond a steady epoch at the same k; the
benchmark sets it beside compiling that k's epoch program alone (the same Program,
lowered and compiled with nothing else), so "no more than one compile" can be read off.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax.numpy as jnp
import ml_collections

from sgdlab import config as config_lib
from sgdlab import data, trainer
from sgdlab.data.pipeline import replicated_structs
from sgdlab.studies import bench
from sgdlab.train import run as run_lib, step


def compile_seconds(resolved: config_lib.Resolved, dataset: data.Dataset, mesh: Any) -> float:
  """Seconds to compile the epoch programs of resolved's k alone (a fresh Run): the
  epoch's batch order and the advance over its steps."""
  run = run_lib.create_run(resolved, dataset, mesh, compile_now=False)
  program = run.program
  state = replicated_structs(program.abstract_state(), mesh)
  start = time.perf_counter()
  run._jitted["order"].lower(run.data_keys, jnp.int32(0)).compile()  # pylint: disable=protected-access
  run.compile(state, program.feed_structs(program.steps_per_call))
  return time.perf_counter() - start


def measure(config: ml_collections.ConfigDict) -> list[str]:
  """Train config (its batch_size_schedule gives every k `config.num_epochs` // phases
  epochs), then compile each later k alone; one table row per change, printed."""
  mesh = step.make_mesh()
  dataset = data.load(config.data)
  resolved = config_lib.resolve(config, n_devices=mesh.size, spec=dataset.spec())
  history = trainer.train(resolved, dataset=dataset, mesh=mesh)
  wall, ks = history.epochs["wall_time"], history.epochs["batch_size"]
  print(f"{history.name}, {config.num_epochs} epochs, one {mesh.devices.flat[0].platform} "
        f"device ({bench.machine_description()}); the first k compiled before training in "
        f"{history.compile_time:.2f} s.")
  print("| k from epoch | change epoch s | steady epoch s | extra s | compile alone s "
        "| extra / compile |")
  print("|---|---:|---:|---:|---:|---:|")
  rows = []
  for e in range(1, len(ks)):
    if ks[e] == ks[e - 1]:
      continue
    steady = statistics.median(w for j, (w, k) in enumerate(zip(wall, ks))
                               if k == ks[e] and j != e)
    alone = compile_seconds(resolved.at_epoch(e), dataset, mesh)
    extra = wall[e] - steady
    rows.append(f"| {ks[e]} from {e + 1} | {wall[e]:.2f} | {steady:.2f} | {extra:.2f} | "
                f"{alone:.2f} | {extra / alone:.2f} |")
    print(rows[-1], flush=True)
  return rows
