"""The validation split (`data.validation_fraction`): examples held out of training, so
that an experiment tunes the learning rate on them and reports the test set untouched,
as the batch-size papers do.

Images: a permutation of the training examples by `data.split_seed` picks them, the rest
keep their order. Text: the last part of the training tokens, by position, as the test
split is cut.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sgdlab.data.spec import Dataset


def validation_size(n: int, fraction: float) -> int:
  """Examples (or tokens) held out of n; rounding half up, as the test split rounds."""
  return int(np.floor(n * fraction + 0.5)) if fraction else 0


def hold_out(dataset: Dataset, fraction: float, seed: int) -> Dataset:
  """`dataset` with `fraction` of its training set moved to x_validation, y_validation."""
  if not fraction:
    return dataset
  if dataset.seq_len:
    cut = len(dataset.x_train) - validation_size(len(dataset.x_train), fraction)
    return dataclasses.replace(dataset, x_train=dataset.x_train[:cut],
                               x_validation=dataset.x_train[cut:], y_validation=dataset.y_train)
  n = dataset.n_train
  held = np.sort(np.random.default_rng(seed).permutation(n)[:validation_size(n, fraction)])
  keep = np.setdiff1d(np.arange(n), held)
  return dataclasses.replace(dataset, x_train=dataset.x_train[keep],
                             y_train=dataset.y_train[keep],
                             x_validation=dataset.x_train[held],
                             y_validation=dataset.y_train[held])
