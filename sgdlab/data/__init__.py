"""Data: datasets as host arrays (sources), and how they reach the devices: resident on
every device (pipeline, `data.pipeline="device"`) or streamed from disk by grain in the
same order (stream, `"grain"`). Integer pixels are kept as uint8 with the scale
the compiled steps divide them by (`DataSpec.dtype`, `DataSpec.scale`); CIFAR training
batches are cropped and flipped on device (augment). A text corpus is a uint8 stream
of byte tokens cut into windows on device (text). A validation split is held out of
training when asked for (splits). `DATASETS` names every dataset, as `models.MODELS`
names every model: a `Source` gives its shapes (`describe`) and its arrays (`load`).

Nothing is cached between calls, so a sweep that changes `config.data` always sees
fresh data. `describe` answers shape questions without reading pixels,
so every problem is a ConfigError before any training starts.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import ml_collections
import numpy as np

from sgdlab.data import augment, cifar, images, imagenet, sources, splits, stream, text
from sgdlab.data.spec import DataSpec, Dataset
from sgdlab.errors import ConfigError

__all__ = ["DATASETS", "DataSpec", "Dataset", "Source", "default_config", "describe", "load"]


def default_config() -> ml_collections.ConfigDict:
  """Fields of `config.data`; each dataset reads the ones it needs."""
  return ml_collections.ConfigDict(dict(
      name="mnist",
      dir="",  # mnist: folder of IDX files (MNIST or Fashion-MNIST), "" = bundled 5000;
      # cifar10 / cifar100: folder of the python batches (required; nothing is downloaded)
      path="",  # text: a UTF-8 file, read as bytes (256 tokens)
      seq_len=128,  # text: tokens per window, the language model's context length
      test_fraction=0.2,  # bundled mnist and digits: stratified held-out fraction; text:
      # the file's last fraction
      validation_fraction=0.0,  # held out of the training set (after n_train): lr is
      # tuned on it, the test set reported
      split_seed=0,
      image_size=0,  # 0 = native; else resize to image_size x image_size; imagenet2012,
      # array_record: the crop's side (0 = 224)
      eval_resize=0,  # imagenet2012, array_record: evaluation's shorter side before the
      # central crop (0 = image_size x 256 / 224)
      num_classes=0,  # array_record: the labels' class count; imagenet2012: 0 or its own
      n_train=0,  # 0 = all; else the first n_train training examples
      synthetic_n_train=4096,
      synthetic_n_test=1024,
      synthetic_input_shape=(28, 28, 1),
      synthetic_num_classes=10,
      synthetic_seed=0,
      synthetic_label_noise=0.0,  # fraction of training labels set to a wrong class
      augment="auto",  # training only: "auto" (crop_flip for CIFAR), "none", "crop_flip"
      pipeline="device",  # "device": resident arrays; "grain": streamed from disk
      cache_dir="",  # grain: where in-memory sets are cached as .npy; "" = ~/.cache/sgdlab
      read_threads=4,  # grain: threads reading batches
      prefetch=4,  # grain: batches read ahead
  ))


def describe(cfg: ml_collections.ConfigDict) -> DataSpec:
  """The shapes `load(cfg)` will produce, without reading pixels; ConfigError for
  anything that would fail (or silently mislead) in `load`. Called once, by
  `sgdlab.config.resolve`; `load` trusts it.
  """
  if cfg.name not in DATASETS:
    raise ConfigError("data.name", cfg.name, f"one of {list(DATASETS)}")
  source = DATASETS[cfg.name]
  if not (isinstance(cfg.validation_fraction, (int, float))
          and 0.0 <= cfg.validation_fraction < 1.0):
    raise ConfigError("data.validation_fraction", cfg.validation_fraction,
                      "a fraction in [0, 1) (0: no validation split)")
  if cfg.path and not source.tokens:
    raise ConfigError("data.path", cfg.path, "empty unless data.name is one of "
                      f"{[n for n, s in DATASETS.items() if s.tokens]}")
  if source.tokens:
    return source.spec(cfg)
  stream.check(cfg)
  for field in ("num_classes", "eval_resize"):
    if cfg[field] and cfg.name not in imagenet.NAMES:
      raise ConfigError(f"data.{field}", cfg[field], f"0 unless data.name is one of "
                        f"{list(imagenet.NAMES)}")
  if cfg.dir and not source.reads_dir:
    raise ConfigError("data.dir", cfg.dir, "empty unless data.name is one of "
                      f"{[n for n, s in DATASETS.items() if s.reads_dir]}")
  if not isinstance(cfg.image_size, int) or cfg.image_size < 0:
    raise ConfigError("data.image_size", cfg.image_size, "0 (native) or a positive side")
  source.check(cfg)
  if cfg.n_train < 0:
    raise ConfigError("data.n_train", cfg.n_train, "0 (all) or a positive count")
  spec = source.spec(cfg)  # also checks the IDX or CIFAR files
  if spec.n_train < 1 or spec.n_test < 1:
    if cfg.dir:
      raise ConfigError("data.dir", cfg.dir, "IDX files with at least one train and test "
                        f"example (got {spec.n_train} train, {spec.n_test} test)")
    raise ConfigError("data.test_fraction", cfg.test_fraction,
                      f"a fraction leaving both splits non-empty (got {spec.n_train} train, "
                      f"{spec.n_test} test)")
  if cfg.n_train > spec.n_train:
    raise ConfigError("data.n_train", cfg.n_train,
                      f"at most the {spec.n_train} training examples of {spec.name}")
  shape, dtype, scale = spec.input_shape, spec.dtype, spec.scale
  if cfg.image_size and images.resizes(shape, cfg.image_size):
    shape, dtype, scale = (cfg.image_size, cfg.image_size, *shape[2:]), "float32", 1.0
  augment.mode(cfg, shape)
  n_train = cfg.n_train or spec.n_train
  n_validation = splits.validation_size(n_train, cfg.validation_fraction)
  if n_validation and n_validation == n_train:
    raise ConfigError("data.validation_fraction", cfg.validation_fraction,
                      f"a fraction leaving training examples (of {n_train})")
  return dataclasses.replace(spec, input_shape=shape, n_train=n_train - n_validation,
                             dtype=dtype, scale=scale, n_validation=n_validation)


def _describe_text(cfg: ml_collections.ConfigDict) -> DataSpec:
  """A text corpus's windows per split; the file is read once, to check it is UTF-8."""
  for field, ok, what in (("pipeline", cfg.pipeline == "device", "'device' for text (the "
                           "corpus stays on every device as bytes)"),
                          ("dir", not cfg.dir, "empty for text (the file is data.path)"),
                          ("image_size", not cfg.image_size, "0 for text"),
                          ("n_train", not cfg.n_train, "0 for text (cut the file instead)"),
                          ("augment", cfg.augment in ("auto", "none"), "'auto' or 'none' for "
                           "text")):
    if not ok:
      raise ConfigError(f"data.{field}", cfg[field], what)
  n_train_tokens, n_test_tokens = text.check(cfg)
  held = splits.validation_size(n_train_tokens, cfg.validation_fraction)
  if held and min(held, n_train_tokens - held) < cfg.seq_len + 1:
    raise ConfigError("data.validation_fraction", cfg.validation_fraction,
                      f"a fraction leaving {cfg.seq_len + 1} tokens (one window) in both the "
                      f"training and validation parts of the {n_train_tokens} training tokens")
  train_tokens = n_train_tokens - held
  return DataSpec("text", (cfg.seq_len,), 256, text.n_windows_train(train_tokens, cfg.seq_len),
                  text.n_windows_test(n_test_tokens, cfg.seq_len), "uint8", 1.0,
                  seq_len=cfg.seq_len, train_tokens=train_tokens,
                  n_validation=text.n_windows_test(held, cfg.seq_len) if held else 0)


def _load_mnist(cfg: ml_collections.ConfigDict) -> Dataset:
  return sources.load_idx_dir(cfg) if cfg.dir else sources.load_mnist_bundled(cfg)


def _load_text(cfg: ml_collections.ConfigDict) -> Dataset:
  train, test = text.read_tokens(cfg)
  empty = np.zeros((0,), np.int32)
  return Dataset("text", train, empty, test, empty, 256, seq_len=cfg.seq_len)


def _check_test_fraction(cfg: ml_collections.ConfigDict) -> None:
  """A bundled set is split here: test_fraction must leave both parts."""
  if not cfg.dir and not 0.0 < cfg.test_fraction < 1.0:
    raise ConfigError("data.test_fraction", cfg.test_fraction, "a fraction in (0, 1)")


def _no_fields(cfg: ml_collections.ConfigDict) -> None:
  del cfg


@dataclasses.dataclass(frozen=True)
class Source:
  """One dataset by name: its shapes without reading pixels, and its host arrays."""

  spec: Callable[[ml_collections.ConfigDict], DataSpec]  # native: before n_train, resizing
  load: Callable[[ml_collections.ConfigDict], Dataset]
  check: Callable[[ml_collections.ConfigDict], None] = _no_fields  # its own fields
  reads_dir: bool = False  # data.dir names its files
  tokens: bool = False  # a byte stream from data.path cut into windows, not images


# Every dataset by name (config.data.name), as models.MODELS has every model; `describe`
# and `load` both read it.
DATASETS: dict[str, Source] = {
    "mnist": Source(sources.mnist_spec, _load_mnist, _check_test_fraction, reads_dir=True),
    "digits": Source(sources.digits_spec, sources.load_digits, _check_test_fraction),
    "synthetic": Source(sources.synthetic_spec, sources.load_synthetic,
                        sources.validate_synthetic),
    **{name: Source(cifar.native_spec, cifar.load, reads_dir=True) for name in cifar.NAMES},
    **{name: Source(_describe_text, _load_text, tokens=True) for name in text.NAMES},
    **{name: Source(imagenet.spec, imagenet.load, imagenet.check, reads_dir=True)
       for name in imagenet.NAMES},
}


def load(cfg: ml_collections.ConfigDict) -> Dataset:
  """`config.data` (described already) as host numpy arrays."""
  return splits.hold_out(DATASETS[cfg.name].load(cfg), cfg.validation_fraction,
                         cfg.split_seed)
