"""ImageNet as the large-batch papers train it: JPEG records streamed by grain.

`data.name="imagenet2012"` reads the dataset as TFDS prepares it (`data.dir`: the TFDS
data_dir, or its `imagenet2012/<version>` folder); `"array_record"` reads a plain folder
of the same records (`data.num_classes` says how many classes). sgdlab's test split is
the papers' evaluation set, the 50,000 images of ILSVRC-2012's `validation` split
(TFDS' `test` split has no labels).

Training images get the Inception-style random-resized crop to `image_size` (224 by
default) and a horizontal flip (Szegedy et al. 2015; Goyal et al. 2017 section 5.1),
each example's draw a function of (seed, epoch, example index) made with the batch
order (`sgdlab.data.augment.draws`), so 1 or 8 devices, 1 or 2 processes and a resumed
run read the same pixels. Evaluation resizes the shorter side to `eval_resize` (256 for
224) and takes the central crop. Images reach the device as uint8; the step scales
them (`DataSpec.scale`), as it does every uint8 set.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from sgdlab.data import records
from sgdlab.data.spec import DataSpec
from sgdlab.errors import ConfigError

NAMES = ("imagenet2012", "array_record")
# sgdlab's split -> the records' split: evaluation is ILSVRC-2012's validation set.
SPLIT_NAMES = {"train": "train", "test": "validation"}
DEFAULT_SIZE = 224
_RESIZE_RATIO = 256 / 224  # evaluation: shorter side 256 for a 224 crop


def crop_size(cfg: ml_collections.ConfigDict) -> int:
  return int(cfg.image_size) or DEFAULT_SIZE


def eval_resize(cfg: ml_collections.ConfigDict) -> int:
  return int(cfg.eval_resize) or round(crop_size(cfg) * _RESIZE_RATIO)


def _folder(cfg: ml_collections.ConfigDict) -> str:
  if not cfg.dir:
    raise ConfigError("data.dir", cfg.dir, f"the folder of {cfg.name}'s records "
                      "(nothing is downloaded)")
  if not os.path.isdir(cfg.dir):
    raise ConfigError("data.dir", cfg.dir, "an existing folder of ArrayRecord shards")
  return cfg.dir


def splits(cfg: ml_collections.ConfigDict) -> tuple[dict[str, records.Split], int]:
  """sgdlab's train and test splits of the records, and the class count; ConfigError
  for a missing folder or split, or a class count that does not fit."""
  folder = _folder(cfg)
  if cfg.name == "imagenet2012":
    found, num_classes = records.tfds_splits(folder, cfg.name)
    if cfg.num_classes not in (0, num_classes):
      raise ConfigError("data.num_classes", cfg.num_classes,
                        f"0 or {num_classes} (features.json's class count)")
  else:
    if not isinstance(cfg.num_classes, int) or cfg.num_classes < 2:
      raise ConfigError("data.num_classes", cfg.num_classes, "the class count of the "
                        "records' labels (at least 2) for data.name='array_record'")
    num_classes = cfg.num_classes
    found = {name: s for name in SPLIT_NAMES.values()
             if (s := records.plain_split(folder, name)) is not None}
  out = {}
  for ours, theirs in SPLIT_NAMES.items():
    if theirs not in found or not found[theirs].paths:
      raise ConfigError("data.dir", folder, f"records of the '{theirs}' split (sgdlab's "
                        f"{ours} split); found {sorted(found) or 'none'}")
    out[ours] = found[theirs]
  return out, num_classes


def check(cfg: ml_collections.ConfigDict) -> None:
  """The fields and every shard (`records.check_split`), before anything compiles."""
  if cfg.pipeline != "grain":
    raise ConfigError("data.pipeline", cfg.pipeline, f"'grain' for {cfg.name} (its images "
                      "are decoded on the host, batch by batch)")
  if cfg.validation_fraction:
    raise ConfigError("data.validation_fraction", cfg.validation_fraction,
                      f"0 for {cfg.name} (its evaluation set is the validation split)")
  if not isinstance(cfg.eval_resize, int) or cfg.eval_resize < 0:
    raise ConfigError("data.eval_resize", cfg.eval_resize, "0 (crop x 256/224) or a side")
  if eval_resize(cfg) < crop_size(cfg):
    raise ConfigError("data.eval_resize", cfg.eval_resize, f"at least the crop, "
                      f"data.image_size={crop_size(cfg)}")
  found, num_classes = splits(cfg)
  for split in found.values():
    records.check_split(split, num_classes, declared=cfg.name == "imagenet2012")


def spec(cfg: ml_collections.ConfigDict) -> DataSpec:
  """Crops of image_size x image_size x 3 as uint8, the splits' record counts."""
  found, num_classes = splits(cfg)
  size = crop_size(cfg)
  return DataSpec(cfg.name, (size, size, 3), num_classes, found["train"].size,
                  found["test"].size, "uint8", 255.0)


def load(cfg: ml_collections.ConfigDict):
  raise ConfigError("data.pipeline", cfg.pipeline, f"'grain' for {cfg.name}: it is "
                    "streamed, never loaded whole")


class RecordSource:
  """Random access to one split's records, decoded and cropped on read.

  `batch(indices, draws)` is what `sgdlab.data.stream` calls from grain's threads: the
  training split crops by each example's draw, the test split centrally.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, split: str, augment: bool):
    from grain import sources  # pylint: disable=g-import-not-at-top
    found, self.num_classes = splits(cfg)
    self.split, self.folder = found[split], cfg.dir
    self._records = sources.ArrayRecordDataSource(list(self.split.paths))
    n = self.split.size
    self.n = min(n, cfg.n_train) if split == "train" and cfg.n_train else n
    self.size, self.resize = crop_size(cfg), eval_resize(cfg)
    self.host_augment = augment  # crops by draw: the stream hands this source the draws

  def __len__(self) -> int:
    return self.n

  def example(self, i: int, draw: int | None = None) -> tuple[np.ndarray, int]:
    """Record i as (uint8 [size, size, 3], label)."""
    from sgdlab.data import jpeg  # pylint: disable=g-import-not-at-top
    where = f"{self.split.name} record {i}"
    image, label = records.check_record(self._records[int(i)], self.num_classes, where,
                                        self.folder)
    try:
      if self.host_augment and draw is not None:
        return jpeg.train_image(image, self.size, np.random.default_rng(int(draw))), label
      return jpeg.eval_image(image, self.size, self.resize), label
    except ValueError as e:
      raise ConfigError("data.dir", self.folder, f"records of whole JPEGs; {where}: {e}"
                        ) from None

  def batch(self, indices: np.ndarray, draws: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Examples at `indices` (any shape): uint8 images and int32 labels."""
    flat = np.asarray(indices).reshape(-1)
    flat_draws = None if draws is None else np.asarray(draws).reshape(-1)
    x = np.empty((len(flat), self.size, self.size, 3), np.uint8)
    y = np.empty((len(flat),), np.int32)
    for j, i in enumerate(flat):
      x[j], y[j] = self.example(i, None if flat_draws is None else flat_draws[j])
    shape = np.shape(indices)
    return x.reshape(*shape, *x.shape[1:]), y.reshape(shape)
