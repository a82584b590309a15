"""What a dataset is to the rest of sgdlab: host arrays, or just their shapes."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
  """A train/test split; images are float32 in [0, 1], labels int32 in [0, num_classes)."""

  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int

  def __post_init__(self):
    # Catch a mismatched hand-built Dataset here rather than as a shape error in a jit.
    if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
      raise ValueError(f"Dataset {self.name!r}: inputs and labels differ in length")
    if self.x_train.shape[1:] != self.x_test.shape[1:]:
      raise ValueError(f"Dataset {self.name!r}: train inputs {self.x_train.shape[1:]} "
                       f"!= test inputs {self.x_test.shape[1:]}")

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.x_train.shape[1:])

  @property
  def n_train(self) -> int:
    return len(self.x_train)

  @property
  def n_test(self) -> int:
    return len(self.x_test)

  def spec(self) -> DataSpec:
    return DataSpec(self.name, self.input_shape, self.num_classes, self.n_train, self.n_test)

  def __repr__(self) -> str:  # the default would print every pixel
    return (f"Dataset(name={self.name!r}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, n_train={self.n_train}, n_test={self.n_test})")


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What a model and a memory estimate need to know, without the arrays."""

  name: str
  input_shape: tuple[int, ...]
  num_classes: int
  n_train: int
  n_test: int

