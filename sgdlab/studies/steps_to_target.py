"""Steps to a target versus batch size k, the lr tuned per k, with B_simple beside it.

Shallue et al. (2018) measure, per k, the fewest steps to a target with the best lr;
McCandlish et al. (2018) predict them as S = S_min (1 + B_noise / k) and B_noise by
the simple noise scale B_simple. `study(config, workdir)` does all of it for a config
with a `steps_to_target` section (`sgdlab.studies.steps_config`): per k one Run
(compiled once; the lr lives in the state) driven by `sgdlab.train.loop` with the
target checked on a growing schedule, the lr walked on a grid (`lr_tuning`), the fit
(`scaling_fit`), then one ordinary run with the online noise scale (`noise_run`).
Writes results.json, table.md, steps_to_target.png and noise_scale.png.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from sgdlab import config as config_lib
from sgdlab import data
from sgdlab.memory import auto
from sgdlab.results import history
from sgdlab.studies import lr_tuning, noise_run, scaling_fit, steps_config
from sgdlab.train import loop, run as run_lib, step


def eval_schedule(limit: int, growth: float) -> list[int]:
  """Steps after which the target metric is checked: 1, 2, ..., then growing by `growth`."""
  steps, t = [], 1
  while t <= limit:
    steps.append(t)
    t = max(t + 1, math.ceil(t * growth))
  return steps


def make_runner(config: ml_collections.ConfigDict, dataset: data.Dataset, mesh: Mesh,
                k: int) -> lr_tuning.RunLr:
  """`run_lr(learning_rate, limit) -> record` for one k, through sgdlab's Run and loop.

  One Run per k (compiled once: lr lives in the state), full batches only
  (drop_remainder), the metric checked at `eval_schedule` until the target, the limit
  or divergence; microbatch_size="auto" keeps k and accumulates where it must.
  """
  s = config.steps_to_target
  c = config.copy_and_resolve_references()
  c.batch_size, c.drop_remainder = k, True
  c.num_epochs = max(int(c.num_epochs),
                     math.ceil(steps_config.budget(s, k) / (dataset.n_train // k)))
  resolved = config_lib.resolve(c, n_devices=mesh.size, spec=dataset.spec())
  resolved = auto.resolve_plan(resolved, mesh)
  base = run_lib.create_run(resolved, dataset, mesh)
  target = loop.Target(s.metric, float(s.target))

  def run_lr(learning_rate: float, limit: int) -> dict[str, Any]:
    """Every seed; the steps are their mean, reached only if every seed reached."""
    start, reached, tests, status = time.perf_counter(), [], [], "reached"
    for seed in s.seeds:
      run = base.for_members([resolved.with_fields(learning_rate=float(learning_rate),
                                                   seed=int(seed))])
      (h,) = loop.run_loop(run, eval_steps=eval_schedule(limit, s.eval_growth),
                           target=target, max_steps=limit)
      if h.reached is None:
        status = _missed(h, s, limit) + (f" (seed {seed})" if len(s.seeds) > 1 else "")
        break
      reached.append(h.reached)
      # The test figure where the tuned metric reached the target (validation tunes lr).
      tests.append(h.evals[steps_config.TEST_OF[s.metric]][h.evals["step"].index(h.reached)])
    done = status == "reached"
    return dict(k=k, learning_rate=learning_rate, status=status,
                steps=int(round(float(np.mean(reached)))) if done else None,
                seed_steps=reached, test_at_target=float(np.mean(tests)) if done else None,
                wall_time=time.perf_counter() - start,
                microbatch_size=resolved.microbatch_size,
                accumulation_steps=resolved.accumulation_steps)

  return run_lr


def _missed(history: Any, s: ml_collections.ConfigDict, limit: int) -> str:
  if history.diverged:
    return history.diverged.split(" (")[0]
  last = history.evals.get(s.metric, [math.nan])[-1]
  return f"not reached in {limit} steps (last {s.metric} {float(last):.4f})"


def sweep(config: ml_collections.ConfigDict, dataset: data.Dataset, mesh: Mesh,
          ks: list[int]) -> list[dict[str, Any]]:
  """Every run of the lr walk at every k; each k starts from the previous k's best lr."""
  runs, j = [], 0
  for k in ks:
    t0 = time.perf_counter()
    run_lr = make_runner(config, dataset, mesh, k)
    logging.info("k=%d: compiled in %.1fs", k, time.perf_counter() - t0)
    k_runs, best_j = lr_tuning.tune_k(run_lr, k, float(config.learning_rate), j,
                                      config.steps_to_target)
    runs += k_runs
    j = j if best_j is None else best_j
  return runs


def noise_study(config: ml_collections.ConfigDict, dataset: data.Dataset, mesh: Mesh,
                best: dict[int, dict[str, Any]]) -> tuple[dict[str, Any] | None, int]:
  """The noise run at steps_to_target.noise_batch_size with the tuned lr of the nearest k,
  noise_length times its steps to target; and those steps (None run when k is 0)."""
  s = config.steps_to_target
  k = int(s.noise_batch_size)
  near = min(best, key=lambda b: abs(math.log(b / k)), default=None) if k else None
  lr = best[near]["learning_rate"] if near else float(config.learning_rate)
  target_steps = best[near]["steps"] if near else 10 * math.ceil(dataset.n_train / max(k, 1))
  if not k:
    return None, target_steps
  return (noise_run.noise_run(config, dataset, mesh, k, lr,
                              math.ceil(target_steps * s.noise_length)), target_steps)


def validate(config: ml_collections.ConfigDict) -> None:
  """ConfigError for anything that cannot run, the sizes against the data's, before any
  compile or write (the data's shapes from `data.describe`: no pixels read)."""
  steps_config.validate(config, data.describe(config.data).n_train)


def study(config: ml_collections.ConfigDict, workdir: str,
          mesh: Mesh | None = None) -> dict[str, Any]:
  """The whole study on one device (default); returns what results.json holds."""
  s = config.steps_to_target
  dataset = data.load(config.data)
  steps_config.validate(config, dataset.n_train)
  mesh = step.make_mesh(jax.devices()[:1]) if mesh is None else mesh
  ks = steps_config.batch_sizes(config, dataset.n_train)
  start = time.perf_counter()
  runs = sweep(config, dataset, mesh, ks)
  best = scaling_fit.best_runs(runs)
  fit = scaling_fit.fit(best)
  sweep_time, t0 = time.perf_counter() - start, time.perf_counter()
  noise_result, noise_steps = noise_study(config, dataset, mesh, best)
  result = dict(
      config=config_lib.to_dict(config), n_train=dataset.n_train, batch_sizes=ks,
      metric=s.metric, target=s.target, runs=runs,
      best={str(k): b for k, b in best.items()}, fit=scaling_fit.fit_record(fit),
      noise=noise_result, noise_target_step=noise_steps,
      seconds=dict(sweep=sweep_time, noise=time.perf_counter() - t0),
      device=f"{jax.devices()[0].platform} x{mesh.size}")
  write(result, workdir, scaling_fit.table(ks, runs, best, fit), fit)
  return result


def write(result: dict[str, Any], workdir: str, text: str,
          fit: Any, echo: Callable[[str], None] = print) -> None:
  """results.json, table.md and the figures in workdir; the tables echoed."""
  from sgdlab.results import noise_figures  # pylint: disable=g-import-not-at-top  (matplotlib)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(history.finite_or_null(result), f, indent=1)
  noise_text = noise_run.noise_table(result["noise"]) if result["noise"] else ""
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(text + "\n\n" + noise_text + "\n")
  noise_figures.steps_figure(result, os.path.join(workdir, "steps_to_target.png"))
  if result["noise"]:
    noise_figures.noise_figure(result, os.path.join(workdir, "noise_scale.png"))
  echo(text)
  if fit:
    echo(scaling_fit.fit_line(fit))
  echo(noise_text)
  seconds = result["seconds"]
  echo(f"sweep {seconds['sweep']:.0f}s, noise run {seconds['noise']:.0f}s; outputs in "
       f"{workdir}")

