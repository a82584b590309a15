"""Training from a config: decide the "auto" fields and load the data once, build the
Run, drive the loop.

`train` is one run, `train_population` many runs that differ only in learning_rate,
lr_decay and seed trained as one vmapped program; both end in `sgdlab.train.loop`.
"""

from __future__ import annotations

from typing import Sequence

import ml_collections
from jax.sharding import Mesh

from sgdlab import config as config_lib
from sgdlab import data
from sgdlab.config import Resolved
from sgdlab.memory import auto
from sgdlab.results import tensorboard
from sgdlab.results.history import History
from sgdlab.train import loop, run as run_lib, step


def prepare(config: ml_collections.ConfigDict | Resolved, mesh: Mesh,
            dataset: data.Dataset | None = None) -> tuple[Resolved, data.Dataset]:
  """Resolve (unless done already), decide the "auto" fields (k, then the fixed-k plan),
  load the data."""
  if isinstance(config, Resolved):
    resolved = config
  else:
    resolved = config_lib.resolve(config, n_devices=mesh.size,
                                  spec=None if dataset is None else dataset.spec())
  resolved = auto.resolve_plan(auto.resolve_batch_size(resolved, mesh), mesh)
  if dataset is None and resolved.config.data.pipeline == "device":  # grain streams it
    dataset = data.load(resolved.config.data)
  return resolved, dataset


def train(config: ml_collections.ConfigDict | Resolved, *, dataset: data.Dataset | None = None,
          mesh: Mesh | None = None, checkpoint_dir: str | None = None,
          log_dir: str | None = None) -> History:
  """Train one run to the end (or to divergence) and return its History.

  With `checkpoint_dir` and `config.checkpoint_every_epochs` > 0 the run checkpoints
  every N epochs and after the last, and first continues from the newest readable
  checkpoint there: the result is bitwise the one of an uninterrupted run. With
  `log_dir`, its TensorBoard events go there as it trains (`sgdlab.results.tensorboard`).
  """
  mesh = step.make_mesh() if mesh is None else mesh
  resolved, dataset = prepare(config, mesh, dataset)
  run = run_lib.create_run(resolved, dataset, mesh)
  return _run_loop(run, checkpoint_dir, [log_dir] if log_dir else None)[0]


def _run_loop(run: run_lib.Run, checkpoint_dir: str | None,
              log_dirs: list[str] | None) -> list[History]:
  with tensorboard.Events(log_dirs, steps_per_epoch=run.program.steps_per_epoch) as events:
    histories = loop.run_loop(run, checkpoint_dir=checkpoint_dir,
                              on_epoch=events if log_dirs else None)
    events.finish(histories)
  return histories


def train_population(configs: Sequence[ml_collections.ConfigDict | Resolved], *,
                     dataset: data.Dataset | None = None, mesh: Mesh | None = None,
                     checkpoint_dir: str | None = None,
                     log_dir: str | None = None) -> list[History]:
  """Train every config as one vmapped program; one History per config, in order.

  Each History has the fields, diagnostics and divergence record that `train(config)`
  would give, equal to it up to float summation order; each member keeps its own
  seed's batch order; a diverged member freezes while the others go on. A single
  config is trained by `train` itself: vmap over one member only adds cost. With
  `log_dir`, member i's TensorBoard events go to log_dir/<i>_<its name>.

  Raises:
    ConfigError: a config is invalid, or the members differ in a field other than
      learning_rate, lr_decay and seed.
  """
  configs = list(configs)
  mesh = step.make_mesh() if mesh is None else mesh
  if len(configs) <= 1:
    return [train(c, dataset=dataset, mesh=mesh, checkpoint_dir=checkpoint_dir,
                  log_dir=log_dir) for c in configs]
  resolved = [c if isinstance(c, Resolved) else config_lib.resolve(
      c, n_devices=mesh.size, spec=None if dataset is None else dataset.spec()) for c in configs]
  config_lib.check_members([r.config for r in resolved])
  # The "auto" fields are decided once: members differ only in numbers the step reads.
  first, dataset = prepare(resolved[0], mesh, dataset)
  decided = auto.decided_fields(first)
  members = [first] + [r.with_fields(**decided) for r in resolved[1:]]
  run = run_lib.create_run(members, dataset, mesh)
  logs = tensorboard.member_dirs(log_dir, [m.name for m in members]) if log_dir else None
  return _run_loop(run, checkpoint_dir, logs)
