"""What a dataset is to the rest of sgdlab: host arrays, or just their shapes."""

from __future__ import annotations

import dataclasses

import numpy as np

from sgdlab.data.images import unit_table

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
  """A train/test split as the devices keep it; labels int32 in [0, num_classes).

  Images are float32 in [0, 1] (scale 1), or uint8 pixels that the compiled steps
  divide by `scale` (255, or 16 for sklearn's digits): a quarter of the bytes on every
  device, and the same values the step sees (`unit()` gives them on the host).

  A text corpus (`seq_len` > 0) keeps each split as one uint8 token stream in x (y is
  empty): its examples are windows of seq_len tokens and their next-token targets,
  cut on device (`sgdlab.data.text`), so n_train counts an epoch's windows.

  The validation split (`data.validation_fraction`) is held out of training; empty
  arrays when there is none.
  """

  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  scale: float = 1.0
  seq_len: int = 0
  x_validation: np.ndarray | None = None
  y_validation: np.ndarray | None = None

  def __post_init__(self):
    if self.x_validation is None:  # an empty split shaped as the others
      object.__setattr__(self, "x_validation", self.x_test[:0])
      object.__setattr__(self, "y_validation", self.y_test[:0])
    # Catch a mismatched hand-built Dataset here rather than as a shape error in a jit.
    if not self.seq_len and any(len(self[f"x_{s}"]) != len(self[f"y_{s}"]) for s in SPLITS):
      raise ValueError(f"Dataset {self.name!r}: inputs and labels differ in length")
    if self.x_train.shape[1:] != self.x_test.shape[1:]:
      raise ValueError(f"Dataset {self.name!r}: train inputs {self.x_train.shape[1:]} "
                       f"!= test inputs {self.x_test.shape[1:]}")
    if self.x_train.dtype != self.x_test.dtype:
      raise ValueError(f"Dataset {self.name!r}: train inputs are {self.x_train.dtype}, "
                       f"test inputs {self.x_test.dtype}")
    if self.scale != 1.0 and self.x_train.dtype != np.uint8:
      raise ValueError(f"Dataset {self.name!r}: scale {self.scale} is for uint8 images; "
                       f"{self.x_train.dtype} images are taken as scaled already")

  def __getitem__(self, name: str) -> np.ndarray:  # dataset["x_validation"]
    return getattr(self, name)

  @property
  def input_shape(self) -> tuple[int, ...]:
    return (self.seq_len,) if self.seq_len else tuple(self.x_train.shape[1:])

  def examples(self, split: str) -> int:
    """Examples of a split: windows for text (an epoch's, for train), else rows."""
    n = len(self[f"x_{split}"])
    if not self.seq_len:
      return n
    return n // self.seq_len if split == "train" else max(n - 1, 0) // self.seq_len

  @property
  def n_train(self) -> int:
    return self.examples("train")

  @property
  def n_test(self) -> int:
    return self.examples("test")

  @property
  def n_validation(self) -> int:
    return self.examples("validation")

  def spec(self) -> DataSpec:
    return DataSpec(self.name, self.input_shape, self.num_classes, self.n_train, self.n_test,
                    self.x_train.dtype.name, float(self.scale), seq_len=self.seq_len,
                    train_tokens=len(self.x_train) if self.seq_len else 0,
                    n_validation=self.n_validation)

  def unit(self) -> Dataset:
    """The same set with float32 images in [0, 1]: what the step computes on, for code
    that feeds a model by hand (4x the bytes of uint8)."""
    if self.x_train.dtype != np.uint8 or self.seq_len:  # tokens are not pixels
      return self
    table = unit_table(self.scale)
    return dataclasses.replace(self, scale=1.0,
                               **{f"x_{s}": table[self[f"x_{s}"]] for s in SPLITS})

  def __repr__(self) -> str:  # the default would print every pixel
    return (f"Dataset(name={self.name!r}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, n_train={self.n_train}, n_test={self.n_test}, "
            f"n_validation={self.n_validation}, "
            f"dtype={self.x_train.dtype.name}, scale={self.scale:g})")


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What a model, the compiled steps and a memory estimate need to know, without the
  arrays: shapes, and how images are stored (dtype, and the scale the step divides by)."""

  name: str
  input_shape: tuple[int, ...]
  num_classes: int
  n_train: int
  n_test: int
  dtype: str = "float32"
  scale: float = 1.0
  seq_len: int = 0  # text: tokens per window (input_shape is (seq_len,))
  train_tokens: int = 0  # text: length of the training token stream
  n_validation: int = 0
