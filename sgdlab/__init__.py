"""sgdlab: measured, reproducible experiments on batch size and learning rate in SGD.

The floors, lowest first: errors and units; data, models, optim; config (validated
once); noise; train (the one step, the Run, the one loop and its pieces); memory (the
batch size that fits); results (the one writer); trainer (`train`, `train_population`);
sweep; studies (steps to target, noise runs, the fit study, benchmarks). `launch`, `fit`
and `report` are the command lines; an import only points down.
"""

from __future__ import annotations

import os
from typing import Any

from sgdlab.config import default_config, set_field
from sgdlab.errors import ConfigError
from sgdlab.results.history import History
from sgdlab.trainer import train, train_population

__all__ = ["ConfigError", "History", "default_config", "find_batch_size", "train",
           "train_network_decay", "train_population"]

# Shortcuts for train_network_decay's options: a name field's parent.
_NAME_SHORTCUTS = {"model": "model.name", "dataset": "data.name", "schedule": "schedule.name",
                   "optimizer": "optimizer.name"}


def train_network_decay(learning_rate: float, lr_decay: float, batch_size: int, n_epochs: int,
                        *, plot: bool | str | os.PathLike = False, **options: Any) -> History:
  """Train with SGD and Keras' inverse-time decay, lr_t = lr / (1 + lr_decay * t).

  The classic experiment: `train_network_decay(1.0, 1e-3, 2048, 10)`, then k=256 and
  k=32, then k=32 at lr=0.1 and 0.01. Options override config fields by dotted path
  (`**{"model.name": "cnn"}`) or double underscore (`data__image_size=14`), and
  model=, dataset=, schedule=, optimizer= name those parts. plot=True draws the loss
  and accuracy curves; a path also saves them.
  """
  config = default_config()
  config.learning_rate = float(learning_rate)
  config.lr_decay = float(lr_decay)
  config.batch_size = batch_size
  config.num_epochs = n_epochs
  for key, value in options.items():
    set_field(config, _NAME_SHORTCUTS.get(key, key.replace("__", ".")), value)
  history = train(config)
  if plot:
    history.plot(None if plot is True else plot)
  return history


def find_batch_size(*args: Any, **kwargs: Any):
  """The largest k whose compiled train step fits a budget (`sgdlab.memory.search`)."""
  from sgdlab.memory import search  # pylint: disable=g-import-not-at-top
  return search.find_batch_size(*args, **kwargs)
