"""Steps to a target per optimizer and k, each tuned by the same budget of quasi-random trials.

The protocol of Shallue et al. (2018, "Measuring the Effects of Data Parallelism on
Neural Network Training", section 3): per (optimizer, k), draw N trials of the
optimizer's search space from a quasi-random sequence, run each until the target,
its step budget or divergence, and score (optimizer, k) by the fewest steps of any
trial. A trial that diverges is infeasible: it is recorded, never dropped. Robust
scoring as in AlgoPerf (Dahl et al., 2023): S independent studies of N trials each
(the draws split in S consecutive runs of the sequence), the score the median over the
studies of each one's best, and the best-so-far curve against trials spent says what
the budget resolves. Nado et al. (2021) asked whether well-tuned momentum and Adam
match LARS and LAMB at large k; Zhang et al. (2019) whether preconditioning moves the
critical batch size up: the S(k) = S_min (1 + B_noise / k) fit per optimizer
(`scaling_fit`) answers both on a workload.

Each trial runs through `steps_to_target.make_runner` (one Run per k and per setting of
the fields other than the lr; the lr lives in the state), with the target checked on
the study's growing schedule. Within a study a trial stops once it needs more steps
than that study's best so far: it could not change the score.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from sgdlab import config as config_lib
from sgdlab import data
from sgdlab.errors import ConfigError, check_number
from sgdlab.results import files, history
from sgdlab.studies import scaling_fit, steps_config, steps_to_target
from sgdlab.sweep import search
from sgdlab.train import step

# A trial's overrides -> its record (status, steps or None, wall_time, ...).
RunTrial = Callable[[dict[str, Any], int], dict[str, Any]]


def section() -> ml_collections.ConfigDict:
  """config.trial_budget: which optimizers, their search spaces, and the budget."""
  return ml_collections.ConfigDict(dict(
      optimizers=("momentum", "nesterov", "adam", "lars", "lamb"),
      # optimizer name -> its search space, as config.sweep.search.space
      spaces=ml_collections.ConfigDict(),
      trials=8,  # N: trials per study, per (optimizer, k)
      studies=2,  # S: independent studies; the score is the median of their bests
      seed=0,  # of the quasi-random sequence; every k gets the same draws
  ))


def _search(budget: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """One optimizer's search, as config.sweep.search holds one: N * S trials of its space."""
  return ml_collections.ConfigDict(dict(
      trials=int(budget.trials) * int(budget.studies), seed=int(budget.seed),
      space=copy.deepcopy(budget.spaces[name])))


def draws(budget: ml_collections.ConfigDict, name: str) -> list[dict[str, Any]]:
  """The N * S trials of one optimizer: its search space's draws, optimizer.name set."""
  return [{"optimizer.name": name, **t} for t in search.trials(_search(budget, name))]


def validate(config: ml_collections.ConfigDict, n_train: int | None = None) -> None:
  """ConfigError for anything that cannot run, before anything compiles: the
  steps_to_target section, the budget, and every trial's config (resolved)."""
  if n_train is None:  # the data's shapes only: no pixels read
    n_train = data.describe(config.data).n_train
  steps_config.validate(config, n_train)
  b = config.trial_budget
  check_number("trial_budget.trials", b.trials, low=1, integer=True, what="an integer >= 1")
  check_number("trial_budget.studies", b.studies, low=1, integer=True, what="an integer >= 1")
  if isinstance(b.optimizers, str) or not b.optimizers:
    raise ConfigError("trial_budget.optimizers", b.optimizers, "a non-empty tuple of names")
  for name in b.optimizers:
    if name not in b.spaces:
      raise ConfigError("trial_budget.optimizers", name,
                        f"an optimizer with a space in trial_budget.spaces "
                        f"(spaces: {', '.join(b.spaces.keys()) or 'none'})")
    search.validate(_search(b, name), config, prefix=f"trial_budget.spaces.{name}")
    for trial in draws(b, name):
      config_lib.resolve(trial_config(config, trial), n_devices=1)


def trial_config(config: ml_collections.ConfigDict,
                 trial: dict[str, Any]) -> ml_collections.ConfigDict:
  """The config with a trial's overrides set (each a known field, or a ConfigError)."""
  c = copy.deepcopy(config)
  for path, value in trial.items():
    config_lib.set_field(c, path, value, where=f"trial field {path}")
  return c


def tune(run_trial: RunTrial, trials: Sequence[dict[str, Any]], n: int, limit: int
         ) -> list[dict[str, Any]]:
  """Every trial's record, in studies of n consecutive trials. A trial's step limit is
  `limit`, or its study's best so far minus one: it runs only while it could win."""
  records = []
  for i, trial in enumerate(trials):
    if i % n == 0:
      best = math.inf
    cap = limit if math.isinf(best) else min(limit, int(best) - 1)
    r = run_trial(trial, cap) if cap >= 1 else dict(steps=None, status="skipped",
                                                   wall_time=0.0)
    r = dict(r, trial=i, study=i // n, overrides=trial)
    if r["steps"] is not None:
      best = min(best, r["steps"])
    records.append(r)
  return records


def best_so_far(records: Sequence[dict[str, Any]], n: int) -> list[list[float]]:
  """Per study, its best steps after 1..n trials (inf until one reached the target)."""
  curves = []
  for s in range(len(records) // n):
    steps = [r["steps"] if r["steps"] is not None else math.inf
             for r in records[s * n:(s + 1) * n]]
    curves.append([float(x) for x in np.minimum.accumulate(steps)])
  return curves


def score(records: Sequence[dict[str, Any]], n: int) -> dict[str, Any]:
  """The (optimizer, k) cell: median over studies of each study's best steps (inf when
  at least half the studies reached nothing), the bests, the infeasible count, and the
  best trial."""
  curves = best_so_far(records, n)
  bests = [c[-1] for c in curves]
  reached = [r for r in records if r["steps"] is not None]
  best = min(reached, key=lambda r: (r["steps"], r["trial"]), default=None)
  return dict(steps=float(np.median(bests)), study_bests=bests, curves=curves,
              infeasible=sum(r["status"].startswith("diverged") for r in records),
              trials=len(records), best=best)


def _fit(steps: dict[int, float]) -> dict[str, float] | None:
  finite = {k: dict(steps=v) for k, v in steps.items() if math.isfinite(v)}
  return scaling_fit.fit_record(scaling_fit.fit(finite))


def fits(cells: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
  """Per optimizer, S(k) = S_min (1 + B_noise / k) through its finite scores, and the
  B_noise of each study's bests alone (None where a study reached fewer than two k): how
  far the budget pins B_noise down."""
  out = {}
  for name, by_k in cells.items():
    out[name] = _fit({k: c["steps"] for k, c in by_k.items()})
    if out[name] is not None:
      n_studies = len(next(iter(by_k.values()))["study_bests"])
      each = [_fit({k: c["study_bests"][i] for k, c in by_k.items()}) for i in range(n_studies)]
      out[name]["study_b_noise"] = [None if f is None else f["b_noise"] for f in each]
  return out


def trial_runner(config: ml_collections.ConfigDict, make_runner: Callable[..., Any],
                 k: int) -> RunTrial:
  """`run_trial(overrides, limit)` at k: one runner (one compiled Run) per setting of the
  fields other than the lr, reused while consecutive trials share it."""
  held: dict[str, Any] = {}

  def run_trial(trial: dict[str, Any], limit: int) -> dict[str, Any]:
    rest = {p: v for p, v in trial.items() if p != "learning_rate"}
    key = json.dumps(rest, sort_keys=True, default=str)
    if held.get("key") != key:
      held.clear()
      held.update(key=key, run_lr=make_runner(trial_config(config, rest), k))
    lr = float(trial.get("learning_rate", config.learning_rate))
    return held["run_lr"](lr, limit)

  return run_trial


def _cell_key(config: ml_collections.ConfigDict, name: str, k: int) -> str:
  """What a cell's trials depend on: the config but the list of optimizers and of k."""
  c = config_lib.to_dict(config)
  c["trial_budget"] = {f: v for f, v in c["trial_budget"].items() if f != "optimizers"}
  c["steps_to_target"] = {f: v for f, v in c["steps_to_target"].items()
                          if f != "batch_sizes"}
  return json.dumps(dict(config=c, optimizer=name, k=k), sort_keys=True, default=str)


def _cached_runs(cell_dir: str | None, key: str, path: str) -> list[dict[str, Any]] | None:
  if cell_dir is None or not os.path.isfile(path):
    return None
  saved = files.read_json(path)
  return saved["runs"] if saved.get("key") == key else None


def study_cells(config: ml_collections.ConfigDict, make_runner: Callable[..., Any],
                ks: Sequence[int], cell_dir: str | None = None
                ) -> tuple[dict[str, dict[int, dict[str, Any]]], list]:
  """Every optimizer at every k: its scored cell and every trial's record. With
  `cell_dir`, each cell's trials are written there when it is done and read back by a
  later call with the same settings: a killed study resumes at its first unfinished
  cell (a cell's trials run in a fixed order, so the result is the same)."""
  b, s = config.trial_budget, config.steps_to_target
  cells: dict[str, dict[int, dict[str, Any]]] = {}
  records = []
  for name in b.optimizers:
    trials = draws(b, name)
    cells[name] = {}
    for k in ks:
      t0 = time.perf_counter()
      key, path = _cell_key(config, name, k), os.path.join(cell_dir or "", f"{name}_k{k}.json")
      runs = _cached_runs(cell_dir, key, path)
      if runs is None:
        runs = tune(trial_runner(config, make_runner, k), trials, int(b.trials),
                    steps_config.budget(s, k))
        if cell_dir is not None:
          os.makedirs(cell_dir, exist_ok=True)
          files.write_json(path, history.finite_or_null(dict(key=key, runs=runs)))
      cells[name][k] = score(runs, int(b.trials))
      records += [dict(r, optimizer=name, k=k) for r in runs]
      logging.info("%s k=%d: %s steps (studies %s), %d/%d infeasible, %.0fs", name, k,
                   cells[name][k]["steps"], cells[name][k]["study_bests"],
                   cells[name][k]["infeasible"], len(runs), time.perf_counter() - t0)
  return cells, records


def table(cells: dict[str, dict[int, dict[str, Any]]], fitted: dict[str, Any]) -> str:
  """Markdown: per optimizer and k the score, each study's best, infeasible trials, the
  best trial's settings; then per optimizer its fit."""
  rows = ["| optimizer | k | steps (median of studies) | studies' best | infeasible "
          "| best trial |", "|---|---:|---:|---|---:|---|"]
  for name, by_k in cells.items():
    for k, c in sorted(by_k.items()):
      bests = ", ".join("-" if math.isinf(x) else f"{x:.0f}" for x in c["study_bests"])
      best = c["best"]
      settings = ("-" if best is None else ", ".join(
          f"{p.split('.')[-1]} {v:.3g}" if isinstance(v, float) else f"{p.split('.')[-1]} {v}"
          for p, v in best["overrides"].items() if p != "optimizer.name"))
      steps = "not reached" if math.isinf(c["steps"]) else f"{c['steps']:.0f}"
      rows.append(f"| {name} | {k} | {steps} | {bests} | {c['infeasible']}/{c['trials']} "
                  f"| {settings} |")
  rows += ["", "| optimizer | S_min | B_noise | B_noise of each study | E_min "
           "| rms log error |", "|---|---:|---:|---|---:|---:|"]
  for name, f in fitted.items():
    each = ", ".join("-" if b is None else f"{b:.0f}" for b in (f or {}).get("study_b_noise", []))
    rows.append(f"| {name} | - | - | - | - | fewer than two k reached |" if f is None else
                f"| {name} | {f['s_min']:.1f} | {f['b_noise']:.0f} | {each} "
                f"| {f['e_min']:,.0f} | {f['rms_log_error']:.3f} |")
  return "\n".join(rows)


def study(config: ml_collections.ConfigDict, workdir: str,
          mesh: Mesh | None = None) -> dict[str, Any]:
  """The whole study on one device (default); returns what results.json holds."""
  dataset = data.load(config.data)
  validate(config, dataset.n_train)
  mesh = step.make_mesh(jax.devices()[:1]) if mesh is None else mesh
  ks = steps_config.batch_sizes(config, dataset.n_train)
  start = time.perf_counter()
  cells, records = study_cells(
      config, lambda c, k: steps_to_target.make_runner(c, dataset, mesh, k), ks,
      cell_dir=os.path.join(workdir, "cells"))
  fitted = fits(cells)
  s = config.steps_to_target
  result = dict(config=config_lib.to_dict(config), n_train=dataset.n_train, batch_sizes=ks,
                metric=s.metric, target=s.target,
                cells={name: {str(k): c for k, c in by_k.items()} for name, by_k in cells.items()},
                fits=fitted, trials=records, seconds=time.perf_counter() - start,
                device=f"{jax.devices()[0].platform} x{mesh.size}")
  write(result, workdir, table(cells, fitted))
  return result


def write(result: dict[str, Any], workdir: str, text: str,
          echo: Callable[[str], None] = print) -> None:
  """results.json, table.md, steps_by_optimizer.png and trial_budget.png; the table echoed."""
  from sgdlab.results import budget_figures  # pylint: disable=g-import-not-at-top  (matplotlib)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(history.finite_or_null(result), f, indent=1)
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(text + "\n")
  budget_figures.steps_figure(result, os.path.join(workdir, "steps_by_optimizer.png"))
  budget_figures.budget_figure(result, os.path.join(workdir, "trial_budget.png"))
  echo(text)
  echo(f"{len(result['trials'])} trials in {result['seconds']:.0f}s; outputs in {workdir}")
