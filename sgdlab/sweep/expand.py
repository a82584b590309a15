"""Sweep expansion: one config with a `sweep` section -> the list of runs (points).

`config.sweep.product` crosses its axes, `config.sweep.zip` steps its axes in lockstep,
`config.sweep.points` lists explicit runs, and `config.sweep.search` draws quasi-random
trials (`sgdlab.sweep.search`); the four multiply, so a product over k times N trials
runs the same N draws at every k, as Shallue et al. (2018) tune. Axes are nested like
the config (`sweep.product.model.name = ("mlp", "cnn")`), so a flag can override them:
`--config.sweep.product.batch_size="(32, 256)"`.

Each point gets a stable id from its resolved config, so re-running a sweep finds its
finished points, and a results folder can tell a different sweep from the same one.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
from typing import Any, Iterable

import ml_collections

from sgdlab import config as config_lib
from sgdlab.config import set_field
from sgdlab.errors import ConfigError
from sgdlab.sweep import search

# Short names for the fields a batch-size study varies, used in readable point ids.
_ID_NAMES = {"batch_size": "k", "learning_rate": "lr", "lr_decay": "decay", "seed": "seed"}


@dataclasses.dataclass(frozen=True)
class Point:
  index: int
  id: str  # "<readable>-<hash of the resolved config>"; a folder name
  overrides: dict[str, Any]  # dotted field -> value
  config: ml_collections.ConfigDict  # resolved: sweep section emptied
  trial: int | None = None  # the quasi-random trial it runs (config.sweep.search)


def _leaves(node: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
  if isinstance(node, (ml_collections.ConfigDict, dict)):
    for key in node.keys():
      yield from _leaves(node[key], f"{prefix}{key}.")
  else:
    yield prefix[:-1], node


def _axes(section: ml_collections.ConfigDict, name: str) -> list[tuple[str, tuple]]:
  axes = []
  for path, values in _leaves(section):
    field = f"sweep.{name}.{path}"
    if isinstance(values, (str, bytes)) or not isinstance(values, (tuple, list)):
      raise ConfigError(field, values, "a tuple of values to sweep, e.g. (32, 256)")
    if not values:
      raise ConfigError(field, tuple(values), "a non-empty tuple of values")
    axes.append((path, tuple(values)))
  return axes


def config_hash(config: ml_collections.ConfigDict) -> str:
  """Hash of everything that changes results (the display name, checkpointing do not)."""
  blob = json.dumps(config_lib.result_fields(config), sort_keys=True, default=str)
  return hashlib.sha1(blob.encode()).hexdigest()[:10]


def _readable(overrides: dict[str, Any]) -> str:
  parts = []
  for path, value in overrides.items():
    key = _ID_NAMES.get(path, path.split(".")[-1])
    text = f"{value:g}" if isinstance(value, float) else str(value)
    parts.append(f"{key}{text}")
  safe = "_".join(parts).replace("/", "-").replace(" ", "")
  return "".join(ch for ch in safe if ch.isalnum() or ch in "._-=+")[:80] or "run"


def expand(config: ml_collections.ConfigDict) -> list[Point]:
  """All points of the sweep, in a deterministic order (one point if there is no sweep)."""
  product = _axes(config.sweep.product, "product")
  zipped = _axes(config.sweep.zip, "zip")
  if zipped and len({len(v) for _, v in zipped}) > 1:
    lengths = {p: len(v) for p, v in zipped}
    raise ConfigError("sweep.zip", lengths, "axes of equal length")
  points = list(config.sweep.points) or [{}]
  for i, p in enumerate(points):
    if not isinstance(p, dict):
      raise ConfigError(f"sweep.points[{i}]", p, "a dict of field -> value")

  search.validate(config.sweep.search, config, swept=[p for p, _ in product + zipped])
  drawn = list(enumerate(search.trials(config.sweep.search))) or [(None, {})]
  grid = [dict(zip([p for p, _ in product], combo))
          for combo in itertools.product(*[v for _, v in product])]
  lockstep = ([dict(zip([p for p, _ in zipped], combo)) for combo in zip(*[v for _, v in zipped])]
              if zipped else [{}])
  base = copy.deepcopy(config)
  base.sweep.product = ml_collections.ConfigDict()
  base.sweep.zip = ml_collections.ConfigDict()
  base.sweep.points = ()
  base.sweep.search.trials, base.sweep.search.space = 0, ml_collections.ConfigDict()

  out, seen = [], {}
  for explicit, g, z, (trial, t) in itertools.product(points, grid, lockstep, drawn):
    overrides = {**g, **z, **{k: v for k, v in explicit.items()}, **t}
    resolved = copy.deepcopy(base)
    for path, value in overrides.items():
      set_field(resolved, path, value, where=f"sweep field {path}")
    digest = config_hash(resolved)
    if digest in seen:
      continue  # the same run twice (e.g. a point repeating the base); run it once
    seen[digest] = True
    named = {k: v for k, v in overrides.items() if k not in t}
    label = f"trial{trial}_{_readable(named)}" if trial is not None else _readable(overrides)
    out.append(Point(index=len(out), id=f"{label[:80]}-{digest}", overrides=overrides,
                     config=resolved, trial=trial))
  return out


def axes(config: ml_collections.ConfigDict) -> dict[str, str]:
  """The fields the sweep sets, each with the sweep section that sets it."""
  found = {path: f"sweep.product.{path}" for path, _ in _leaves(config.sweep.product)}
  found.update({path: f"sweep.zip.{path}" for path, _ in _leaves(config.sweep.zip)})
  found.update({path: "sweep.search.space"
                for path, _ in search.fields(config.sweep.search.space)})
  for i, p in enumerate(config.sweep.points):
    if isinstance(p, dict):
      found.update({path: f"sweep.points[{i}]" for path in p})
  return found


def share(points: list[Point], worker_index: int, num_workers: int) -> list[Point]:
  """This worker's points: every num_workers-th, starting at worker_index.

  Deterministic from the sweep alone, and round-robin over an order that varies k
  slowest, so every worker gets a mix of cheap and costly points.
  """
  return points[worker_index::num_workers]
