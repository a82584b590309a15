"""CIFAR-10 and CIFAR-100 from their "python version" batches in data.dir; no download.

Each batch is a pickled dict with bytes keys: b"data", uint8 [n, 3072] of channel-major
planes (1024 red, then green, then blue values, each a row-major 32x32 image), and the
labels, b"labels" (CIFAR-10) or b"fine_labels" (CIFAR-100). CIFAR-10 has data_batch_1
.. data_batch_5 and test_batch, CIFAR-100 train and test: the official split, so
data.test_fraction does not apply. A folder holding the archive's own folder
(cifar-10-batches-py, cifar-100-python) works too.

Pickles run code when loaded, so only what a batch holds (numpy arrays, lists, bytes)
may be built from one. Every fault of a file is one ConfigError on data.dir naming it;
`native_spec` reads the whole set to find them (about 0.2 s for CIFAR-10), so a run
fails before anything is written.
"""

from __future__ import annotations

import dataclasses
import os
import pickle

import ml_collections
import numpy as np

from sgdlab.data.images import stored
from sgdlab.data.spec import DataSpec, Dataset
from sgdlab.errors import ConfigError

NAMES = ("cifar10", "cifar100")
SIDE, CHANNELS = 32, 3
SCALE = 255.0


@dataclasses.dataclass(frozen=True)
class Layout:
  """The files of one CIFAR variant, and where its labels are."""

  title: str
  train: tuple[str, ...]
  test: str
  labels: bytes
  num_classes: int
  archive_folder: str  # what the official tarball unpacks to


LAYOUTS = {
    "cifar10": Layout("CIFAR-10", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                      b"labels", 10, "cifar-10-batches-py"),
    "cifar100": Layout("CIFAR-100", ("train",), "test", b"fine_labels", 100,
                       "cifar-100-python"),
}

# The globals a numpy array (pickled by numpy 1 or 2, with any protocol) needs.
_SAFE_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
    (f"numpy.{core}.{module}", name) for core in ("core", "_core")
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                         ("numeric", "_frombuffer"))}


class _BatchUnpickler(pickle.Unpickler):
  """Builds only numpy arrays and plain Python values: a pickle can run any code."""

  def find_class(self, module: str, name: str):
    if (module, name) not in _SAFE_GLOBALS:
      raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR batch "
                                   "never holds")
    if module.startswith("numpy.core.") and hasattr(np, "_core"):
      module = "numpy._core." + module.removeprefix("numpy.core.")  # numpy 2's own name
    return super().find_class(module, name)


def folder(cfg: ml_collections.ConfigDict) -> str:
  """The folder holding the batches: data.dir, or the archive's folder inside it."""
  layout = LAYOUTS[cfg.name]
  if not cfg.dir:
    raise ConfigError("data.dir", cfg.dir, f"a folder of the {layout.title} python batches "
                      f"({_listing(layout)}); sgdlab downloads nothing")
  directory = os.path.expanduser(cfg.dir)
  if not os.path.isdir(directory):
    raise ConfigError("data.dir", cfg.dir, f"an existing folder of {layout.title} batches "
                      f"({_listing(layout)})")
  inner = os.path.join(directory, layout.archive_folder)
  if not os.path.exists(os.path.join(directory, layout.test)) and os.path.isdir(inner):
    return inner
  return directory


def _listing(layout: Layout) -> str:
  train = layout.train if len(layout.train) < 3 else (f"{layout.train[0]}..{layout.train[-1][-1]}",)
  return ", ".join((*train, layout.test))


def read_batch(cfg: ml_collections.ConfigDict, path: str) -> tuple[np.ndarray, np.ndarray]:
  """One batch file: uint8 images [n, 32, 32, 3] and int32 labels [n], or a ConfigError
  on data.dir naming the file."""
  layout = LAYOUTS[cfg.name]

  def fault(what: str) -> ConfigError:
    return ConfigError("data.dir", cfg.dir, f"{path}: {what}")

  if not os.path.isfile(path):
    raise ConfigError("data.dir", cfg.dir, f"missing {os.path.basename(path)} in "
                      f"{os.path.dirname(path)} ({layout.title} batches: {_listing(layout)})")
  try:
    with open(path, "rb") as f:
      batch = _BatchUnpickler(f, encoding="bytes").load()
  except Exception as e:  # pylint: disable=broad-except  # any fault of the bytes
    detail = " ".join(str(e).split())[:200] or type(e).__name__
    raise fault(f"not a readable {layout.title} batch pickle ({detail})") from e
  keys = sorted(batch) if isinstance(batch, dict) else None
  if keys is None or b"data" not in batch or layout.labels not in batch:
    held = f"keys {keys}" if keys is not None else f"a {type(batch).__name__}"
    raise fault(f"want a dict with b'data' and {layout.labels!r}; it holds {held}")
  pixels = batch[b"data"]
  if (not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2
      or pixels.shape[1] != SIDE * SIDE * CHANNELS or not len(pixels)):
    what = (f"{pixels.dtype}{list(pixels.shape)}" if isinstance(pixels, np.ndarray)
            else type(pixels).__name__)
    raise fault(f"b'data' is {what}; want uint8 [n, {SIDE * SIDE * CHANNELS}], n >= 1")
  try:
    labels = np.asarray(batch[layout.labels])
  except Exception:  # pylint: disable=broad-except  # a ragged or odd label list
    labels = np.asarray(None)
  if labels.shape != (len(pixels),) or labels.dtype.kind not in "iu":
    raise fault(f"{layout.labels!r} is {labels.dtype}{list(labels.shape)}; want "
                f"{len(pixels)} integer labels, one per image")
  bad = (labels < 0) | (labels >= layout.num_classes)
  if bad.any():
    raise fault(f"label {labels[bad][0]} at position {int(np.argmax(bad))}; want "
                f"0..{layout.num_classes - 1}")
  # Channel-major planes to [n, row, col, channel].
  images = pixels.reshape(-1, CHANNELS, SIDE, SIDE).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


def _read_split(cfg: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
  layout, directory = LAYOUTS[cfg.name], folder(cfg)
  names = layout.train if split == "train" else (layout.test,)
  parts = [read_batch(cfg, os.path.join(directory, name)) for name in names]
  if len(parts) == 1:
    return parts[0]
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def native_spec(cfg: ml_collections.ConfigDict) -> DataSpec:
  """Counts of the files (all read and checked), before n_train and resizing."""
  layout = LAYOUTS[cfg.name]
  directory = folder(cfg)
  counts = {}
  for split, names in (("train", layout.train), ("test", (layout.test,))):
    counts[split] = sum(len(read_batch(cfg, os.path.join(directory, name))[1])
                        for name in names)
  return DataSpec(cfg.name, (SIDE, SIDE, CHANNELS), layout.num_classes, counts["train"],
                  counts["test"], "uint8", SCALE)


def load(cfg: ml_collections.ConfigDict) -> Dataset:
  """The set (described already) as the devices keep it: uint8, or float32 if resized."""
  x_train, y_train = _read_split(cfg, "train")
  x_test, y_test = _read_split(cfg, "test")
  if cfg.n_train:
    x_train, y_train = x_train[:cfg.n_train], y_train[:cfg.n_train]
  x_train, scale = stored(x_train, SCALE, cfg.image_size)
  x_test, _ = stored(x_test, SCALE, cfg.image_size)
  return Dataset(cfg.name, x_train, y_train, x_test, y_test, LAYOUTS[cfg.name].num_classes,
                 scale)
