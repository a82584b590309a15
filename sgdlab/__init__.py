"""sgdlab: measured, reproducible experiments on batch size and learning rate in SGD."""

from __future__ import annotations

import os
from typing import Any

from sgdlab.config import default_config
from sgdlab.errors import ConfigError
from sgdlab.history import History
from sgdlab.trainer import train

__all__ = ["ConfigError", "History", "default_config", "train", "train_network_decay"]

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
    path = _NAME_SHORTCUTS.get(key, key.replace("__", "."))
    _set(config, path, value)
  history = train(config)
  if plot:
    history.plot(None if plot is True else plot)
  return history


def _set(config, path: str, value: Any) -> None:
  *parents, leaf = path.split(".")
  node = config
  for p in parents:
    if p not in node:
      raise ConfigError(path, value, f"a known field; config has no '{p}'")
    node = node[p]
  if leaf not in node:
    raise ConfigError(path, value, f"a known field; valid here: {sorted(node.keys())}")
  node[leaf] = tuple(value) if isinstance(value, list) else value
