"""Training from a config: decide the "auto" fields and load the data once, build the Run,
drive the loop, write the results.

`train` is one run, `train_population` many runs that differ only in learning_rate,
lr_decay and seed trained as one vmapped program. Both, and the sweep runner, decide
"auto" fields in `decide_auto`, load data in `load_data` and train through `fit`.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import ml_collections
from jax.sharding import Mesh

from sgdlab import config as config_lib
from sgdlab import data
from sgdlab.config import Resolved
from sgdlab.errors import UsageError, unwritable
from sgdlab.memory import auto
from sgdlab.results import tensorboard
from sgdlab.results.history import History
from sgdlab.results.writer import Writer
from sgdlab.train import loop, run as run_lib, step

Config = ml_collections.ConfigDict | Resolved


def decide_auto(resolved: Sequence[Resolved], mesh: Mesh) -> list[Resolved]:
  """Each Resolved with its "auto" fields (k, the fixed-k plan) decided by compiling, and
  a batch_size_schedule's k checked against the memory budget (`auto.resolve_schedule`);
  the search runs once for the runs that share every field but lr, decay and seed."""
  decided, out = {}, []
  for r in resolved:
    scheduled = config_lib.batch_schedule.is_scheduled(r.config)
    if r.auto_batch_size or r.auto_plan or (scheduled and r.config.memory_budget):
      key = json.dumps(config_lib.shared_fields(r.config), sort_keys=True, default=str)
      if key not in decided:
        decide = auto.resolve_schedule if scheduled else (
            lambda r, mesh: auto.resolve_plan(auto.resolve_batch_size(r, mesh), mesh))
        decided[key] = auto.decided_fields(decide(r, mesh))
      r = r.with_fields(**decided[key])
    out.append(r)
  return out


def load_data(resolved: Resolved, dataset: data.Dataset | None = None) -> data.Dataset | None:
  """The one place a run's data is loaded: `dataset` if given, None when the grain
  pipeline streams it, else `config.data` loaded."""
  if dataset is not None or resolved.config.data.pipeline != "device":
    return dataset
  return data.load(resolved.config.data)


def fit(run: run_lib.Run, writer: Writer | None = None, *,
        checkpoint_dir: str | None = None) -> list[History]:
  """The loop over `run`, with `writer` as its live results and finisher."""
  if writer is None:
    return loop.run_loop(run, checkpoint_dir=checkpoint_dir)
  with writer.open(run.program.first.epoch_end_steps):
    histories = loop.run_loop(run, checkpoint_dir=checkpoint_dir, on_epoch=writer)
    writer.finish(histories)
  return histories


def _resolve(configs: Sequence[Config], mesh: Mesh,
             dataset: data.Dataset | None) -> list[Resolved]:
  spec = None if dataset is None else dataset.spec()
  return [c if isinstance(c, Resolved) else
          config_lib.resolve(c, n_devices=mesh.size, spec=spec) for c in configs]


def _writer(members: Sequence[Resolved], workdir: str | None,
            log_dir: str | None) -> Writer | None:
  """Folders: workdir itself for one run, workdir/<i>_<name> per member of a population."""
  if workdir is None and log_dir is None:
    return None
  names = [m.name for m in members]
  many = len(members) > 1
  dirs = ((tensorboard.member_dirs(workdir, names) if many else [workdir]) if workdir
          else [])
  logs = (tensorboard.member_dirs(log_dir, names) if many else [log_dir]) if log_dir else None
  writer = Writer(dirs, log_dirs=logs)
  writer.start([config_lib.to_dict(m.config) for m in members])
  return writer


def _check_workdir(workdir: str | None) -> None:
  why = workdir and unwritable(workdir)
  if why:
    raise UsageError("workdir", workdir, f"a writable folder ({why})")


def train_population(configs: Sequence[Config], *, workdir: str | None = None,
                     dataset: data.Dataset | None = None, mesh: Mesh | None = None,
                     checkpoint_dir: str | None = None,
                     log_dir: str | None = None) -> list[History]:
  """Train every config as one vmapped program; one History per config, in order.

  Each History has the fields, diagnostics and divergence record that `train(config)`
  would give, equal to it up to float summation order; each member keeps its own
  seed's batch order; a diverged member freezes while the others go on. A single
  config is trained alone: vmap over one member only adds cost. With `workdir`, member
  i's folder (`sgdlab.results.writer`) is workdir/<i>_<its name>, its checkpoints go
  to workdir/checkpoints (unless `checkpoint_dir` says otherwise) and it resumes from
  them; with `log_dir`, its TensorBoard events go to log_dir/<i>_<its name>.

  Raises:
    ConfigError: a config is invalid, or the members differ in a field other than
      learning_rate, lr_decay and seed; UsageError: workdir is not writable.
  """
  mesh = step.make_mesh() if mesh is None else mesh
  members = _resolve(list(configs), mesh, dataset)
  if not members:
    return []
  if len(members) > 1:
    config_lib.check_members([m.config for m in members])
  _check_workdir(workdir)
  members = decide_auto(members, mesh)
  if workdir and checkpoint_dir is None:
    checkpoint_dir = os.path.join(workdir, "checkpoints")
  run = run_lib.create_run(members if len(members) > 1 else members[0],
                           load_data(members[0], dataset), mesh)
  return fit(run, _writer(members, workdir, log_dir), checkpoint_dir=checkpoint_dir)


def train(config: Config, *, workdir: str | None = None, dataset: data.Dataset | None = None,
          mesh: Mesh | None = None, checkpoint_dir: str | None = None,
          log_dir: str | None = None) -> History:
  """Train one run to the end (or to divergence) and return its History.

  With `workdir`, the run's folder is written there as it trains (config.json,
  status.json, epochs.csv, then history.json, params.npz, curves.png). With a
  checkpoint folder (`checkpoint_dir`, or workdir/checkpoints) and
  `config.checkpoint_every_epochs` > 0 the run checkpoints every N epochs and after
  the last, and first continues from the newest readable checkpoint there: the result
  is bitwise the one of an uninterrupted run. With `log_dir`, its TensorBoard events go
  there as it trains (`sgdlab.results.tensorboard`).
  """
  return train_population([config], workdir=workdir, dataset=dataset, mesh=mesh,
                          checkpoint_dir=checkpoint_dir, log_dir=log_dir)[0]
