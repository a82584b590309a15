"""Run an experiment: resolve every point, then train this worker's share, then summarize.

`resolve_points` does all the checking before anything is written or trained: it expands the
sweep, refuses command-line overrides of fields the sweep sets, resolves every point
(`sgdlab.config.resolve`), checks population groups, and decides the "auto" fields (k,
the fixed-k plan) by compiling (`sgdlab.memory.auto`). A bad value is one ConfigError.

Then each group of points (one point, or a population) is claimed, trained through
`sgdlab.train` and stored; a point that diverges or crashes is recorded in its folder
and the others still run. Running again skips finished points and resumes interrupted
ones from their checkpoints. Every epoch reaches the point's folder (epochs.csv, status)
and its TensorBoard run, <workdir>/tensorboard/<point id> by default, as it ends.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
from typing import Mapping, Sequence

import ml_collections
from absl import logging

from sgdlab import config as config_lib
from sgdlab import data, trainer
from sgdlab.errors import ConfigError, UsageError, unwritable
from sgdlab.results import files, summary
from sgdlab.results.writer import Writer
from sgdlab.sweep import claims, expand, groups, hosts, progress
from sgdlab.sweep.workers import Worker
from sgdlab.train import run as run_lib, step

_POLL_SECONDS = 2.0
SKIPPED, HELD, TRAINED = "skipped", "held", "trained"


@dataclasses.dataclass(frozen=True)
class Options:
  """How this worker runs its share of a sweep."""

  workdir: str
  worker: Worker = Worker()
  stale_after: float = 600.0  # seconds without a heartbeat before a claim is stale
  wait: bool = True  # at the end, wait for points held by other live workers
  keep_checkpoints: bool = False
  # TensorBoard events, one folder per point id: None is <workdir>/tensorboard, "" none.
  tensorboard_dir: str | None = None

  @property
  def log_root(self) -> str:
    """The TensorBoard folder, or "" for none."""
    if self.tensorboard_dir is None:
      return os.path.join(self.workdir, "tensorboard")
    return self.tensorboard_dir


@dataclasses.dataclass(frozen=True)
class ResolvedPoint:
  point: expand.Point
  resolved: config_lib.Resolved

  @property
  def id(self) -> str:
    return self.point.id


def check_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, str]) -> None:
  """A --config.<field> override of a field the sweep sets would be silently dropped."""
  axes = expand.axes(config)
  for name, value in overrides.items():
    if name in axes or any(a.startswith(name + ".") for a in axes):
      where = axes.get(name) or next(v for a, v in axes.items() if a.startswith(name + "."))
      raise UsageError(f"--config.{name}", value, f"the sweep sets {name} ({where}), so this "
                       "override would be ignored; override the sweep instead "
                       f"(--config.{where.split('[')[0]}=...)")


def resolve_points(config: ml_collections.ConfigDict, mesh,
                   overrides: Mapping[str, str] | None = None) -> list[ResolvedPoint]:
  """Every point expanded, validated and resolved ("auto" fields decided), before anything
  else."""
  check_overrides(config, overrides or {})
  points = expand.expand(config)
  resolved = trainer.decide_auto(
      [config_lib.resolve(point.config, n_devices=mesh.size) for point in points], mesh)
  for group in groups.group(points):
    if len(group) > 1:
      config_lib.check_members([p.config for p in group])
  return [ResolvedPoint(point, r) for point, r in zip(points, resolved)]


def check_workdir(workdir: str, all_points: Sequence[ResolvedPoint]) -> None:
  """Refuse a workdir whose folder for some point id holds another config (read only)."""
  for p in all_points:
    path = os.path.join(workdir, p.id, "config.json")
    if not os.path.exists(path):
      continue
    try:
      stored = files.read_json(path)
    except (OSError, ValueError) as e:
      raise UsageError("--workdir", workdir, f"a results folder of this sweep; {path} is "
                       f"unreadable ({e})") from e
    difference = files.config_difference(stored, config_lib.to_dict(p.point.config))
    if difference:
      raise UsageError("--workdir", workdir, f"it holds a different sweep: the folder of "
                       f"point {p.id} has another config ({difference}); use a new --workdir")


def prepare_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write-test-{os.getpid()}")
    with open(probe, "w"):
      pass
    os.unlink(probe)
  except OSError as e:
    raise UsageError("--workdir", workdir, f"not a writable folder ({e.strerror})") from e


def check_log_dir(path: str) -> None:
  """A --tensorboard_dir that can be made and written to, checked without making anything."""
  why = unwritable(path)
  if why:
    raise UsageError("--tensorboard_dir", path, f"not a writable folder ({why})")


def prepare_outputs(options: Options) -> None:
  """The workdir made, and it and the TensorBoard folder writable (UsageError if not)."""
  given = options.tensorboard_dir  # checked before the workdir is made; the default after
  if given:
    check_log_dir(given)
  prepare_workdir(options.workdir)
  if given is None:
    check_log_dir(options.log_root)


class Sweep:
  """This worker's run of a resolved sweep: claims, training, results, failures."""

  def __init__(self, all_points: Sequence[ResolvedPoint], mine: Sequence[ResolvedPoint],
               options: Options, mesh):
    self.options, self.mesh = options, mesh
    self.owner = claims.Owner(worker=str(options.worker))
    self.progress = progress.Progress(len(all_points), len(mine), options.worker)
    self.writer = hosts.is_writer()
    self.failed: list[tuple[str, str]] = []
    self.held: list[ResolvedPoint] = []
    self._dataset: tuple[str, data.Dataset] | None = None

  def run_groups(self, all_points: Sequence[ResolvedPoint]) -> None:
    by_id = {p.id: p for p in all_points}
    for group in groups.group([p.point for p in all_points]):
      self.run_group([by_id[point.id] for point in group])

  def run_group(self, group: Sequence[ResolvedPoint]) -> None:
    """Claim what it can of a group, and train those points as one run."""
    taken, decisions = [], []
    try:
      for p in group:
        decision, claim = self._claim(p)
        decisions.append(decision)
        if decision == TRAINED:
          taken.append((p, claim))
      if taken:
        mine = [p for p, _ in taken]
        # Points of the group finished before (a kill between two members' files): train
        # the whole group again from its checkpoint, so the rest is bitwise what the
        # uninterrupted population gives, and write only the points taken.
        whole = len(mine) < len(group) and HELD not in decisions
        self._train(list(group) if whole else mine, write={p.id for p in mine})
    finally:
      for _, claim in taken:
        if claim is not None:
          claim.release()

  def _claim(self, p: ResolvedPoint):
    """(decision, claim): SKIPPED when finished, HELD when claimed elsewhere, else TRAINED."""
    point_dir = os.path.join(self.options.workdir, p.id)
    claim, decision = None, SKIPPED
    if self.writer:
      state = files.status(point_dir)["status"]
      if state not in files.FINISHED:
        got = claims.claim(self.options.workdir, p.id, self.owner,
                           stale_after=self.options.stale_after)
        if isinstance(got, claims.Holder):
          decision = HELD
          logging.info("%s %s: held by %s; later", self.progress.prefix(p), p.id, got.describe())
        elif files.status(point_dir)["status"] in files.FINISHED:  # finished meanwhile
          got.release()
          state = files.status(point_dir)["status"]
        else:
          claim, decision = got, TRAINED
      if decision == SKIPPED:
        logging.info("%s %s: already %s, skipped (%s)", self.progress.prefix(p), p.id, state,
                     self.progress.settled())
    decision = (SKIPPED, HELD, TRAINED)[hosts.broadcast_int(
        (SKIPPED, HELD, TRAINED).index(decision))]
    if decision == HELD:
      self.held.append(p)
    return decision, claim

  def _data(self, resolved: config_lib.Resolved) -> data.Dataset | None:
    key = repr(resolved.config.data.to_dict())
    if self._dataset is None or self._dataset[0] != key:
      self._dataset = None  # keep one dataset in memory
      self._dataset = (key, trainer.load_data(resolved))
    return self._dataset[1]

  def _writer(self, group: Sequence[ResolvedPoint], write: set[str]) -> Writer:
    """The group's folders; those of points it trains again only to resume are left as
    they are (their files are complete)."""
    who = dict(worker=str(self.options.worker), host=self.owner.host, pid=self.owner.pid)
    chosen = [p for p in group if p.id in write]
    dirs = [os.path.join(self.options.workdir, p.id) for p in chosen]
    logs = ([os.path.join(self.options.log_root, p.id) for p in chosen]
            if self.options.log_root else None)
    writer = Writer(dirs, log_dirs=logs, status=who, enabled=self.writer,
                    members=[i for i, p in enumerate(group) if p.id in write])
    writer.start([config_lib.to_dict(p.resolved.config) for p in chosen])
    return writer

  def _checkpoint_dir(self, group: Sequence[ResolvedPoint]) -> str:
    first = os.path.join(self.options.workdir, group[0].id, "checkpoints")
    if len(group) == 1:
      return first
    digest = hashlib.sha1(" ".join(p.id for p in group).encode()).hexdigest()[:10]
    return os.path.join(first, f"population-{digest}")

  def _train(self, group: Sequence[ResolvedPoint], write: set[str]) -> None:
    """Train one point, or a population, and write the folders of the points in `write`."""
    if len(group) > 1:
      logging.info("points %s: training as one population", ", ".join(p.id for p in group))
    else:
      logging.info("%s %s: training %s", self.progress.prefix(group[0]), group[0].id,
                   group[0].resolved.name)
    start = time.perf_counter()
    writer = self._writer(group, write)
    try:
      members = [p.resolved for p in group]
      run = run_lib.create_run(members if len(group) > 1 else members[0],
                               self._data(members[0]), self.mesh)
      histories = trainer.fit(run, writer, checkpoint_dir=self._checkpoint_dir(group))
      outcomes = ["diverged" if h.diverged else "done" for h in histories]
      if self.writer and not self.options.keep_checkpoints:
        shutil.rmtree(os.path.join(self.options.workdir, group[0].id, "checkpoints"),
                      ignore_errors=True)
    except Exception as e:  # a crashing point must not end the sweep
      logging.exception("%s failed", [p.id for p in group])
      error = f"{type(e).__name__}: {e}"
      outcomes = ["failed"] * len(group)
      writer.fail(error)
      self.failed.extend((p.id, error) for p in group if p.id in write)
    seconds = (time.perf_counter() - start) / len(group)
    for p, outcome in zip(group, outcomes):
      if p.id in write:
        logging.info("%s %s: %s in %s%s; %s", self.progress.prefix(p), p.id, outcome,
                     progress.duration(seconds), f" (population of {len(group)})"
                     if len(group) > 1 else "", self.progress.settled(seconds))

  def wait_for_held(self) -> None:
    """Until every held point is settled, or its holder dies and this worker takes over."""
    last_note = 0.0
    while self.held:
      pending, self.held = self.held, []
      for p in pending:
        holder = claims.holder(self.options.workdir, p.id)
        if holder is not None and not claims.is_stale(holder, self.options.stale_after):
          self.held.append(p)
          continue
        state = files.status(os.path.join(self.options.workdir, p.id))["status"]
        if holder is None and state in ("done", "diverged", "failed"):
          logging.info("%s %s: %s by another worker (%s)", self.progress.prefix(p), p.id,
                       state, self.progress.settled())
          continue
        self.run_group([p])  # its holder is gone: resume it here (or find a new holder)
      if self.held:
        if time.monotonic() - last_note > 60:
          last_note = time.monotonic()
          logging.info("waiting for %d point(s) held by other workers: %s", len(self.held),
                       ", ".join(p.id for p in self.held))
        time.sleep(_POLL_SECONDS)


def run_sweep(config: ml_collections.ConfigDict, options: Options, *,
        overrides: Mapping[str, str] | None = None) -> int:
  """Plan, run this worker's points not already finished, summarize; returns failures."""
  mesh = step.make_mesh()
  all_points = resolve_points(config, mesh, overrides)
  mine = expand.share(all_points, options.worker.index, options.worker.count)
  check_workdir(options.workdir, all_points)
  sweep = Sweep(all_points, mine, options, mesh)
  if sweep.writer:
    prepare_outputs(options)
  logging.info("sweep of %d points; worker %s runs %d of them in %s", len(all_points),
               options.worker, len(mine), options.workdir)
  with sweep.progress:
    sweep.run_groups(mine)
    if sweep.held and options.wait and sweep.writer and hosts.current().process_count == 1:
      sweep.wait_for_held()
    elif sweep.held:
      logging.info("left to their holders: %s", ", ".join(p.id for p in sweep.held))
  if sweep.writer:
    text = summary.rebuild(options.workdir,
                           title=os.path.basename(os.path.abspath(options.workdir)))
    print(text)
    logging.info("summary: %s", os.path.join(options.workdir, "summary.md"))
  return len(sweep.failed)


__all__ = ["ConfigError", "Options", "ResolvedPoint", "resolve_points", "run_sweep"]
