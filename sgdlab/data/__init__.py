"""Data: datasets as host arrays (sources), and how they reach the devices: resident on
every device (pipeline, `data.pipeline="device"`) or streamed from disk by grain in the
same order (stream, `"grain"`).

Nothing is cached between calls, so a sweep that changes `config.data` always sees
fresh data. `describe` answers shape questions without reading pixels,
so every problem is a ConfigError before any training starts.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from sgdlab.data import sources, stream
from sgdlab.data.spec import DataSpec, Dataset
from sgdlab.errors import ConfigError

DATASETS = sources.DATASETS
__all__ = ["DATASETS", "DataSpec", "Dataset", "default_config", "describe", "load"]


def default_config() -> ml_collections.ConfigDict:
  """Fields of `config.data`; each dataset reads the ones it needs."""
  return ml_collections.ConfigDict(dict(
      name="mnist",
      dir="",  # mnist: folder of IDX files (MNIST or Fashion-MNIST); "" = bundled 5000
      test_fraction=0.2,  # bundled mnist and digits: stratified held-out fraction
      split_seed=0,
      image_size=0,  # 0 = native; else resize to image_size x image_size
      n_train=0,  # 0 = all; else the first n_train training examples
      synthetic_n_train=4096,
      synthetic_n_test=1024,
      synthetic_input_shape=(28, 28, 1),
      synthetic_num_classes=10,
      synthetic_seed=0,
      synthetic_label_noise=0.0,  # fraction of training labels set to a wrong class
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
  stream.check(cfg)
  if cfg.dir and cfg.name != "mnist":
    raise ConfigError("data.dir", cfg.dir, "empty unless data.name is 'mnist'")
  if not isinstance(cfg.image_size, int) or cfg.image_size < 0:
    raise ConfigError("data.image_size", cfg.image_size, "0 (native) or a positive side")
  if cfg.name == "synthetic":
    sources.validate_synthetic(cfg)
  elif not cfg.dir and not 0.0 < cfg.test_fraction < 1.0:
    raise ConfigError("data.test_fraction", cfg.test_fraction, "a fraction in (0, 1)")
  if cfg.n_train < 0:
    raise ConfigError("data.n_train", cfg.n_train, "0 (all) or a positive count")
  spec = sources.native_spec(cfg)  # also checks the IDX files
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
  shape = spec.input_shape
  if cfg.image_size:
    shape = (cfg.image_size, cfg.image_size, *shape[2:])
  n_train = cfg.n_train or spec.n_train
  return dataclasses.replace(spec, input_shape=shape, n_train=n_train)


def load(cfg: ml_collections.ConfigDict) -> Dataset:
  """`config.data` (described already) as host numpy arrays."""
  if cfg.name == "synthetic":
    return sources.load_synthetic(cfg)
  if cfg.name == "digits":
    return sources.load_digits(cfg)
  return sources.load_idx_dir(cfg) if cfg.dir else sources.load_mnist_bundled(cfg)
