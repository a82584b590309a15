"""The fit study behind `python -m sgdlab.fit`: search, then fit.json, fit.png and a table.

With a fixed k and microbatch_size (or dtype) "auto" it is the fixed-k planner's study
instead: every plan considered, and the one chosen.
"""

from __future__ import annotations

import dataclasses
import os
import time

import ml_collections

from sgdlab import config as config_lib
from sgdlab.errors import ConfigError, UsageError
from sgdlab.memory import plan, search, trials
from sgdlab.memory.budget import Budget, device_budget
from sgdlab.results import figures, files
from sgdlab.train import step
from sgdlab.units import parse_bytes


@dataclasses.dataclass(frozen=True)
class FitOptions:
  """What to search; None for budget and headroom means the config's values."""

  memory_budget: str | None = None
  headroom: float | None = None
  method: str = "compile"  # compile | trial
  image_sizes: str = ""  # "28,112": one search per image side
  target: str = ""  # "", "cpu" or "accelerator" runtime terms
  exact: bool = True
  trial_start: int = trials.TRIAL_START
  trial_steps: int = trials.TRIAL_STEPS  # 0 = a whole epoch


def parse_sizes(text: str) -> list[int]:
  try:
    sizes = [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    sizes = [0]
  if not sizes or min(sizes) < 1:
    raise ConfigError("image_sizes", text, "comma-separated positive integers, e.g. 28,56,112")
  return sizes


def check_writable(workdir: str) -> None:
  """Fail before the search, and without creating anything, if results cannot be written."""
  path = os.path.abspath(workdir)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  if not os.path.isdir(path) or not os.access(path, os.W_OK):
    raise ConfigError("workdir", workdir, f"a writable folder ({path} is not)")


def _check(config: ml_collections.ConfigDict, options: FitOptions) -> tuple[str, float, list[int]]:
  """The budget text, headroom and image sizes, validated before jax starts."""
  budget_text = config.memory_budget if options.memory_budget is None else options.memory_budget
  headroom = config.memory_headroom if options.headroom is None else options.headroom
  if not 0.0 <= headroom < 1.0:
    raise ConfigError("memory_headroom", headroom, "a fraction in [0, 1)")
  sizes = parse_sizes(options.image_sizes) if options.image_sizes else []
  if options.trial_steps < 0:
    raise ConfigError("trial_steps", options.trial_steps, "a count >= 0 (0: a whole epoch)")
  if budget_text:
    parse_bytes(budget_text)  # a typo costs nothing
  return budget_text, headroom, sizes


def _check_planning(options: FitOptions) -> None:
  if options.method != "compile":
    raise UsageError("--method", options.method, "compile when microbatch_size or dtype "
                     'is "auto" (plans are compiled, never tried)')
  if options.image_sizes:
    raise UsageError("--image_sizes", options.image_sizes, "empty when microbatch_size or "
                     'dtype is "auto" (one k, one input size)')


def fit_study(config: ml_collections.ConfigDict, workdir: str, options: FitOptions) -> str:
  """Validate everything, search, then write fit.json and fit.png; returns the text."""
  budget_text, headroom, sizes = _check(config, options)
  mesh = step.make_mesh()
  configs = [search.with_image_size(config, s) for s in sizes] or [config]
  resolved = [config_lib.resolve(c, n_devices=mesh.size) for c in configs]
  planning = resolved[0].auto_plan  # k fixed: the plans for it, not the largest k
  if planning:
    _check_planning(options)
  check_writable(workdir)
  budget = device_budget(mesh, budget_text, headroom)
  result = dict(method="plan" if planning else options.method,
                config=config_lib.to_dict(config), image_sizes=sizes)
  target = options.target or None
  if planning:
    found = plan.plan_microbatch(resolved[0], budget, mesh=mesh, target=target)
    text, result["plan"] = found.table(), found.to_dict()
    figure = lambda path: figures.plan_figure(found, path)  # noqa: E731
  elif options.method == "compile":
    text, reports, result["reports"] = _compile(config, resolved[0], sizes, budget, mesh,
                                                target, options.exact)
    figure = lambda path: figures.bytes_vs_k_figure(reports, path)  # noqa: E731
  else:
    text, result["trials"] = _trials(resolved, budget, mesh, options)
    figure = None
  result.update(budget=dict(bytes=budget.bytes, headroom=budget.headroom,
                            usable=budget.usable, source=budget.source),
                text=text, written=time.strftime("%Y-%m-%d %H:%M:%S"))
  os.makedirs(workdir, exist_ok=True)
  files.write_json(os.path.join(workdir, "fit.json"), result)
  if figure is not None:
    figure(os.path.join(workdir, "fit.png"))
  return text


def _compile(config: ml_collections.ConfigDict, resolved: config_lib.Resolved,
             sizes: list[int], budget: Budget, mesh, target: str | None,
             exact: bool) -> tuple[str, list, list[dict]]:
  """The largest k by compiling: at the config's input, or one search per image side."""
  if not sizes:
    report = search.find_batch_size(resolved, budget, mesh=mesh, target=target, exact=exact)
    return report.table(), [report], [report.to_dict()]
  results = search.tradeoff(config, sizes, budget, mesh=mesh, target=target, exact=exact)
  reports = [r for r in results if isinstance(r, search.FitReport)]
  if not reports:
    raise results[0]
  text = "\n\n".join(f"image size {s}:\n{r.table()}" for s, r in zip(sizes, results)
                     if isinstance(r, search.FitReport))
  text += "\n\n" + search.tradeoff_table(sizes, results)
  records = [dict(r.to_dict(), image_size=s) if isinstance(r, search.FitReport)
             else dict(image_size=s, error=str(r)) for s, r in zip(sizes, results)]
  return text, reports, records


def _trials(resolved: list[config_lib.Resolved], budget: Budget, mesh,
            options: FitOptions) -> tuple[str, list[dict]]:
  """The largest k by trial runs in child processes (real out-of-memory errors)."""
  on_cpu = mesh.devices.flat[0].platform == "cpu"
  searches = []
  for r in resolved:
    report = trials.trial_search(r, n_devices=mesh.size, start=options.trial_start,
                                 steps=options.trial_steps or None,
                                 budget_bytes=budget.bytes * mesh.size if on_cpu else None)
    if not on_cpu:
      report.notes.append("off CPU the trials run against the device's own memory")
    searches.append((r, report))
  text = "\n\n".join(f"input {r.spec.input_shape}: {t.table()}" for r, t in searches)
  return text, [t.to_dict() for _, t in searches]
