"""One registry of datasets: describe and load both read data.DATASETS."""

import numpy as np
import pytest

from sgdlab import data
from sgdlab.data import DataSpec, Dataset, Source
from sgdlab.errors import ConfigError


def _tiny(cfg):
  x = np.arange(6 * 4, dtype=np.float32).reshape(6, 2, 2, 1)
  y = np.array([0, 1, 0, 1, 0, 1], np.int32)
  return Dataset("tiny", x[:4], y[:4], x[4:], y[4:], 2)


def test_a_registered_source_is_described_and_loaded(monkeypatch):
  spec = lambda cfg: DataSpec("tiny", (2, 2, 1), 2, 4, 2, "float32", 1.0)
  monkeypatch.setitem(data.DATASETS, "tiny", Source(spec, _tiny))
  cfg = data.default_config()
  cfg.name = "tiny"
  described, loaded = data.describe(cfg), data.load(cfg)
  assert described == loaded.spec()
  assert loaded.x_train.shape == (4, 2, 2, 1)


def test_fields_a_source_does_not_read_are_refused(monkeypatch):
  spec = lambda cfg: DataSpec("tiny", (2, 2, 1), 2, 4, 2, "float32", 1.0)
  monkeypatch.setitem(data.DATASETS, "tiny", Source(spec, _tiny))
  cfg = data.default_config()
  cfg.name, cfg.dir = "tiny", "/some/folder"
  with pytest.raises(ConfigError, match="data.dir.*'mnist', 'cifar10', 'cifar100'"):
    data.describe(cfg)
  cfg.dir, cfg.path = "", "corpus.txt"
  with pytest.raises(ConfigError, match=r"data.path.*\['text'\]"):
    data.describe(cfg)


def test_every_name_is_one_source():
  assert set(data.DATASETS) == {"mnist", "digits", "synthetic", "cifar10", "cifar100", "text",
                                "imagenet2012", "array_record"}
  assert all(isinstance(s, Source) for s in data.DATASETS.values())
