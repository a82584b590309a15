"""Checkpoints inside one run, so a killed run continues exactly where it stopped.

A checkpoint at epoch e holds two items (orbax-checkpoint), three when streamed:
  state  the TrainState (params, optimizer state, step, hyperparameters, dropout rng),
         stacked over the members of a population
  host   each member's History columns so far (per-epoch rows and per-step lists)
  data   the grain pipeline's iterator state (`sgdlab.data.stream.Stream`)
That is all a run needs: the batch order is a function of (seed, epoch) and dropout of
(rng, step, device), and the noise-scale EMA is rebuilt by replaying the per-step
estimates in `host` through `noise.NoiseEMA`. A resumed run (or population) therefore
ends with the same bits as one that was never interrupted.

orbax writes each checkpoint into a temporary folder and renames it when complete, so
a `kill -9` during a save leaves the previous checkpoint intact. A checkpoint that
cannot be read anyway (a disk fault, a truncated file) is deleted with a warning and
the one before it is tried; with none left the run starts over, and says so.

Saves are synchronous: a save that has returned is on disk before training goes on.
In a multi-process run every process takes part in save and restore (orbax coordinates
them), and the checkpoint folder must be on a file system that every process sees.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from sgdlab import noise
from sgdlab.results.history import History

FORMAT = 2  # of the host item; bump when its fields change meaning


class _QuietOrbax(logging.logging.Filter):
  """orbax logs ~40 INFO lines per save through absl; keep its warnings and errors."""

  def filter(self, record) -> bool:
    return record.levelno >= logging.logging.WARNING or "/orbax/" not in record.pathname


logging.get_absl_logger().addFilter(_QuietOrbax())


@dataclasses.dataclass
class Restored:
  """What a checkpoint gives back: epochs completed, the state, each member's columns
  so far (dicts with "epochs", "steps" and "evals")."""

  epoch: int
  state: Any
  members: list[dict[str, dict[str, list[float]]]]


class Checkpointer:
  """Saves every `every_epochs` epochs (and at the end); restores the newest readable one."""

  def __init__(self, directory: str | os.PathLike, every_epochs: int, *, keep: int = 2):
    if every_epochs < 1:
      raise ValueError(f"every_epochs must be >= 1, got {every_epochs}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.every_epochs = every_epochs
    # keep >= 2: the previous checkpoint is the fallback when the newest is unreadable.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max(2, keep), create=True, enable_async_checkpointing=False,
        cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def due(self, epochs_done: int, num_epochs: int) -> bool:
    """Save after this epoch? Every N epochs, and always after the last one."""
    return epochs_done % self.every_epochs == 0 or epochs_done == num_epochs

  def save(self, epochs_done: int, state: Any, histories: Sequence[History],
           data: Any = None) -> None:
    """`data`: a stream (`sgdlab.data.stream.Stream`) whose iterator state is saved too."""
    host = dict(format=FORMAT, epoch=epochs_done,
                members=[dict(epochs=h.epochs, steps=h.steps, evals=h.evals, diverged=h.diverged,
                              reached=h.reached) for h in histories])
    items = dict(state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host))
    if data is not None:
      items["data"] = _grain_args().CheckpointSave(data.iterator)
    self._manager.save(epochs_done, args=ocp.args.Composite(**items), force=True)
    self._manager.wait_until_finished()
    logging.info("%s | checkpoint at epoch %d", histories[0].name, epochs_done)

  def restore(self, like: Any, data: Any = None) -> Restored | None:
    """The newest readable checkpoint, placed like the arrays of `like`; None if none is.
    A stream given as `data` is set to the checkpoint's iterator state.

    `like` is a TrainState with the run's shapes, dtypes and shardings (the initial
    state); restoring against it keeps optax's state types, which a target-less restore
    would turn into plain dicts.
    """
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
    tried = []
    for epoch in sorted(self._manager.all_steps(), reverse=True):
      try:
        items = dict(state=ocp.args.StandardRestore(target), host=ocp.args.JsonRestore())
        if data is not None:
          items["data"] = _grain_args().CheckpointRestore(data.iterator)
        restored = self._manager.restore(epoch, args=ocp.args.Composite(**items))
        host = restored.host
        _check_host(host, epoch)
      except Exception as e:  # any fault in a checkpoint means: try the one before it
        logging.warning("checkpoint at epoch %d in %s is unreadable (%s: %s); deleting it "
                        "and trying the previous one", epoch, self.directory,
                        type(e).__name__, _first_line(e))
        tried.append(epoch)
        self._delete(epoch)
        continue
      return Restored(epoch=epoch, state=restored.state, members=host["members"])
    if tried:
      logging.warning("no readable checkpoint left in %s (tried epochs %s); starting the run "
                      "over from epoch 0", self.directory, tried)
    return None

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def _delete(self, epoch: int) -> None:
    try:
      self._manager.delete(epoch)
    except Exception:  # too damaged for orbax to delete: remove the folder ourselves
      if jax.process_index() == 0:
        shutil.rmtree(os.path.join(self.directory, str(epoch)), ignore_errors=True)
    self._manager.reload()


def resume_history(history: History, saved: dict[str, dict[str, list[float]]],
                   ema: noise.NoiseEMA | None) -> None:
  """Put a member's saved columns back into `history` and replay them into the noise EMA."""
  history.epochs = {k: list(v) for k, v in saved["epochs"].items()}
  history.steps = {k: list(v) for k, v in saved["steps"].items()}
  history.evals = {k: list(v) for k, v in saved.get("evals", {}).items()}
  history.diverged, history.reached = saved.get("diverged", ""), saved.get("reached")
  if ema is not None and "grad_sq" in history.steps:
    ema.update(np.asarray(history.steps["grad_sq"], np.float64),
               np.asarray(history.steps["trace_sigma"], np.float64))


def _check_host(host: Any, epoch: int) -> None:
  """A host item that does not describe `epoch` finished epochs is as bad as a torn file."""
  if not isinstance(host, dict) or host.get("format") != FORMAT:
    found = host.get("format") if isinstance(host, dict) else host
    raise ValueError(f"host item has format {found!r}, expected {FORMAT}")
  members = host.get("members")
  if not isinstance(members, list) or not members:
    raise ValueError("host item has no members")
  for saved in members:  # a member that diverged or stopped early has fewer rows
    rows = saved.get("epochs", {}).get("epoch", [])
    stopped = saved.get("diverged") or saved.get("reached") is not None
    if (host.get("epoch") != epoch or len(rows) > epoch or (len(rows) < epoch and not stopped)
        or not isinstance(saved.get("steps"), dict)):
      raise ValueError(f"host item describes {len(rows)} epochs, expected {epoch}")


def _grain_args() -> Any:
  import grain  # pylint: disable=g-import-not-at-top
  return grain.checkpoint


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:200] if text else ""
