"""Streaming input (`data.pipeline="grain"`): batches read from disk by grain, in the
device pipeline's order, for datasets that do not fit on a device.

The order is not grain's: each epoch's batches are the rows of the same batch order the
device pipeline gathers from (`pipeline.batch_order`, a function of (seed, epoch)), so
the two pipelines feed the step the same examples, and a run's results do not depend
on which one it used. One grain dataset covers the run's global steps; element g is
the batch of step g, read by grain's threads ahead of the step that needs it. Its
iterator state (the next step) goes into the run's orbax checkpoint, so a resumed run
continues with the batch an uninterrupted one would have read.

Images are read from memory maps: the IDX file itself when it is plain, otherwise a
.npy cache written once (`data.cache_dir`), and delivered as the resident pipeline
stores them: uint8 pixels as they are (the step scales them), resized images as
float32 in [0, 1], made per batch exactly as the resident pipeline makes the whole
set. A batch carries its examples' augmentation draws when the order has them. In a
multi-process run each process reads only the columns of each global batch that its
own devices hold.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from typing import Any, Callable

import ml_collections
import numpy as np

from sgdlab.data import augment, idx, imagenet, sources
from sgdlab.data.imagenet import RecordSource
from sgdlab.data.images import resizes, to_unit
from sgdlab.errors import ConfigError, unwritable

PIPELINES = ("device", "grain")
HostOrder = Callable[[int], dict[str, np.ndarray]]  # epoch -> idx, draw? [P?, steps, k], mask
_CACHE_FORMAT = 3  # 2: images cached as stored (uint8 pixels stay uint8); 3: cut to n_train first


def check(cfg: ml_collections.ConfigDict) -> None:
  """The pipeline fields; grain must be importable when asked for (ConfigError)."""
  if cfg.pipeline not in PIPELINES:
    raise ConfigError("data.pipeline", cfg.pipeline, f"one of {list(PIPELINES)}")
  if cfg.pipeline == "device":
    return
  try:
    import grain  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise ConfigError("data.pipeline", cfg.pipeline, "'device', or install grain "
                      "(pip install 'sgdlab[grain]')") from None
  for field in ("read_threads", "prefetch"):
    if not isinstance(cfg[field], int) or cfg[field] < 1:
      raise ConfigError(f"data.{field}", cfg[field], "a positive integer")
  root = os.path.dirname(cache_folder(cfg))
  if unwritable(root):
    raise ConfigError("data.cache_dir", cfg.cache_dir or root,
                      "a folder that can be created or written (grain caches sets there)")


class ArraySource:
  """Random access to one split: images (a memory map, or an array) and labels."""

  host_augment = False  # stored images: any crop is the step's

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, scale: float,
               image_size: int = 0, keep_uint8: bool = True):
    self.images, self.labels = images, np.asarray(labels, np.int32)
    self.scale, self.image_size = scale, image_size
    self.keep = (keep_uint8 and images.dtype == np.uint8
                 and not resizes(images.shape[1:], image_size))

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:  # grain's RandomAccessDataSource
    x, y = self.batch(np.asarray([i]))
    return dict(x=x[0], y=y[0])

  def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Examples at `indices` (any shape), images as the resident pipeline stores them
    (uint8 unless resized, else float32 in [0, 1]), int32 labels."""
    flat = np.asarray(indices).reshape(-1)
    x = self.images[flat]
    x = x[..., None] if self.keep and x.ndim == 3 else x  # IDX [n, H, W]: one channel
    if not self.keep:
      x = to_unit(x, self.scale, self.image_size)
    return x.reshape(*indices.shape, *x.shape[1:]), self.labels[flat].reshape(indices.shape)


def open_split(cfg: ml_collections.ConfigDict, split: str) -> ArraySource | RecordSource:
  """A split of `config.data` (described already) as a source read from disk."""
  if cfg.name in imagenet.NAMES:
    return RecordSource(cfg, split, augment=split == "train" and augment.mode(
        cfg, ()) in augment.HOST)
  if cfg.name == "mnist" and cfg.dir and not cfg.validation_fraction:
    found = idx.idx_headers(cfg)
    images, labels = sources.read_idx_split(cfg, found, split)
    if not isinstance(images, np.memmap):  # gzip: decompressed once into the cache
      images = _cached(cfg, f"{split}_images", lambda: images)
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    # uint8 is kept when both splits are uint8, as `sources.load_idx_dir` keeps them.
    return ArraySource(images, labels, scale=scale, image_size=cfg.image_size,
                       keep_uint8=sources.idx_scale(found) != 1.0)
  # Sets that are built in memory (bundled, CIFAR, teacher-student) are cached as stored.
  from sgdlab import data  # pylint: disable=g-import-not-at-top
  loaded: dict[str, Any] = {}

  def array(name: str) -> np.ndarray:
    if not loaded:
      loaded["dataset"] = data.load(cfg)
    return getattr(loaded["dataset"], name)

  images = _cached(cfg, f"x_{split}", lambda: array(f"x_{split}"))
  labels = _cached(cfg, f"y_{split}", lambda: array(f"y_{split}"))
  return ArraySource(images, np.asarray(labels), scale=1.0)


def cache_folder(cfg: ml_collections.ConfigDict) -> str:
  """One folder per data config (its fields but the pipeline's own), under cache_dir."""
  fields = {k: v for k, v in cfg.to_dict().items()
            if k not in ("pipeline", "cache_dir", "read_threads", "prefetch", "augment")}
  fields["cache_format"] = _CACHE_FORMAT
  digest = hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
  root = cfg.cache_dir or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
      "sgdlab")
  return os.path.join(root, f"{cfg.name}-{digest[:12]}")


def _cached(cfg: ml_collections.ConfigDict, name: str,
            make: Callable[[], np.ndarray]) -> np.ndarray:
  """A memory map of `name` in the cache, written (atomically) on first use."""
  folder = cache_folder(cfg)
  path = os.path.join(folder, f"{name}.npy")
  if not os.path.exists(path):
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npy.tmp")
    try:
      with os.fdopen(fd, "wb") as f:
        np.save(f, np.ascontiguousarray(make()))
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.unlink(tmp)
  return np.load(path, mmap_mode="r")


class Stream:
  """The training batches of a run as one grain iterator over all its global steps.

  `order(epoch)` is the device pipeline's order on the host; `columns` the part of every
  global batch this process reads. Elements are dicts x [P?, k_local, ...], y, mask
  [k_local]; `take(n)` stacks the next n along a steps axis (after the members axis).
  """

  def __init__(self, source: ArraySource, order: HostOrder, *, steps_per_epoch: int,
               num_epochs: int, columns: slice, population: bool, read_threads: int,
               prefetch: int):
    import grain  # pylint: disable=g-import-not-at-top
    self.source, self._order_fn, self.columns = source, order, columns
    self.steps_per_epoch, self.population = steps_per_epoch, population
    self._orders: dict[int, dict[str, np.ndarray]] = {}
    self._lock = threading.Lock()
    dataset = grain.MapDataset.range(num_epochs * steps_per_epoch).map(self.batch)
    self._dataset = dataset.to_iter_dataset(grain.ReadOptions(
        num_threads=read_threads, prefetch_buffer_size=prefetch))
    self.iterator = iter(self._dataset)

  def order(self, epoch: int) -> dict[str, np.ndarray]:
    with self._lock:  # grain's threads ask too; keep the orders of this and the last epoch
      if epoch not in self._orders:
        self._orders[epoch] = self._order_fn(epoch)
        for old in [e for e in self._orders if e < epoch - 1]:
          del self._orders[old]
      return self._orders[epoch]

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """Global step `step`'s batch: this process's columns of its order row, read."""
    epoch, s = divmod(int(step), self.steps_per_epoch)
    order = self.order(epoch)
    indices = order["idx"][..., s, self.columns]
    draws = order["draw"][..., s, self.columns] if "draw" in order else None
    if self.source.host_augment:  # cropped as they are decoded
      x, y = self.source.batch(indices, draws)
      return dict(x=x, y=y, mask=order["mask"][s, self.columns])
    x, y = self.source.batch(indices)
    out = dict(x=x, y=y, mask=order["mask"][s, self.columns])
    if draws is not None:
      out["draw"] = draws
    return out

  @property
  def position(self) -> int:
    """The global step whose batch `take` returns next."""
    return int(self.iterator.get_state()["next_index"])

  def seek(self, step: int) -> None:
    self.iterator = iter(self._dataset)
    self.iterator.set_state(dict(next_index=int(step)))

  def take(self, n: int) -> dict[str, np.ndarray]:
    parts = [next(self.iterator) for _ in range(n)]
    axis = 1 if self.population else 0
    return {key: np.stack([p[key] for p in parts], 0 if key == "mask" else axis)
            for key in parts[0]}


def eval_batches(source: ArraySource, k: int, columns: slice, *, read_threads: int,
                 prefetch: int):
  """A split in order, k examples a batch, the last padded (mask 0): an iterator."""
  import grain  # pylint: disable=g-import-not-at-top
  n = len(source)

  def read(b: int) -> dict[str, np.ndarray]:
    index = np.arange(b * k, (b + 1) * k)
    mask = (index < n).astype(np.float32)
    x, y = source.batch(np.where(index < n, index, 0)[columns])
    return dict(x=x, y=y, mask=mask[columns])

  dataset = grain.MapDataset.range(-(-n // k)).map(read)
  return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                        prefetch_buffer_size=prefetch)))
