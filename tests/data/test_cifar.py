"""CIFAR-10/100 from python batches written here; every fault a ConfigError on data.dir;
uint8 storage trains exactly as float32 storage does."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

import conftest
from sgdlab import config as config_lib, data
from sgdlab.data import images, pipeline
from sgdlab.errors import ConfigError
from sgdlab import trainer

FILES = {"cifar10": ([f"data_batch_{i}" for i in range(1, 6)], "test_batch"),
         "cifar100": (["train"], "test")}


def planes(images: np.ndarray) -> np.ndarray:
  """[n, 32, 32, 3] -> CIFAR's rows of 1024 red, 1024 green, 1024 blue values."""
  return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def write_batch(path, pixels, labels, name: str = "cifar10", **extra) -> None:
  key = b"labels" if name == "cifar10" else b"fine_labels"
  batch = {b"data": pixels, key: list(labels), b"batch_label": b"a batch", **extra}
  if name == "cifar100":
    batch[b"coarse_labels"] = [int(y) // 5 for y in labels]
  with open(path, "wb") as f:
    pickle.dump(batch, f, protocol=2)  # the protocol of the published files


def write_cifar(folder, name: str = "cifar10", per_batch: int = 8, n_test: int = 20,
                seed: int = 0) -> dict[str, np.ndarray]:
  """Every file of a small CIFAR set; returns its images [n, 32, 32, 3] and labels."""
  rng = np.random.default_rng(seed)
  classes = 10 if name == "cifar10" else 100
  train, test = FILES[name]
  os.makedirs(folder, exist_ok=True)
  out = {}
  for split, files, n in (("train", train, per_batch * 5 // len(train)), ("test", [test], n_test)):
    images = rng.integers(0, 256, (n * len(files), 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, classes, n * len(files))
    for i, f in enumerate(files):
      write_batch(os.path.join(folder, f), planes(images[i * n:(i + 1) * n]),
                  labels[i * n:(i + 1) * n], name)
    out[f"x_{split}"], out[f"y_{split}"] = images, labels
  return out


def cfg(folder, name: str = "cifar10", **overrides):
  c = data.default_config()
  c.update(dict(name=name, dir=str(folder), **overrides))
  return c


# ------------------------------------------------------------------------- reading


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_reads_every_batch_in_order(tmp_path, name):
  want = write_cifar(tmp_path, name)
  ds = data.load(cfg(tmp_path, name))
  assert ds.x_train.dtype == np.uint8 and ds.scale == 255.0
  assert (ds.n_train, ds.n_test, ds.input_shape) == (40, 20, (32, 32, 3))
  assert ds.num_classes == (10 if name == "cifar10" else 100)
  for split in ("train", "test"):
    np.testing.assert_array_equal(getattr(ds, f"x_{split}"), want[f"x_{split}"])
    np.testing.assert_array_equal(getattr(ds, f"y_{split}"), want[f"y_{split}"])
  assert ds.y_train.dtype == np.int32
  assert data.describe(cfg(tmp_path, name)) == ds.spec()
  assert ds.spec() == data.DataSpec(name, (32, 32, 3), ds.num_classes, 40, 20, "uint8", 255.0)


@pytest.mark.parametrize("row,col,channel", [(0, 0, 0), (0, 31, 1), (5, 17, 2), (31, 2, 0)])
def test_a_pixel_written_at_row_col_channel_reads_back_there(tmp_path, row, col, channel):
  write_cifar(tmp_path)
  pixels = np.zeros((3, 3072), np.uint8)
  pixels[1, channel * 1024 + row * 32 + col] = 200  # planes of 1024, each row-major 32x32
  write_batch(tmp_path / "data_batch_2", pixels, [0, 1, 2])
  ds = data.load(cfg(tmp_path))
  image = ds.x_train[9]  # batch 1 holds 8 images; this is batch 2's second
  assert image[row, col, channel] == 200 and np.count_nonzero(image) == 1
  assert not ds.x_train[8].any() and not ds.x_train[10].any()


def test_the_archive_folder_inside_data_dir_is_found(tmp_path):
  want = write_cifar(tmp_path / "cifar-100-python", "cifar100")
  ds = data.load(cfg(tmp_path, "cifar100"))
  np.testing.assert_array_equal(ds.y_test, want["y_test"])


def test_n_train_and_image_size(tmp_path):
  want = write_cifar(tmp_path)
  ds = data.load(cfg(tmp_path, n_train=10))
  np.testing.assert_array_equal(ds.x_train, want["x_train"][:10])
  assert ds.n_test == 20
  small = cfg(tmp_path, image_size=16, n_train=10)
  resized = data.load(small)  # resampled pixels: float32 in [0, 1]
  assert resized.x_train.dtype == np.float32 and resized.scale == 1.0
  assert resized.input_shape == (16, 16, 3) and 0 <= resized.x_train.min() <= 1
  assert data.describe(small) == resized.spec()
  assert data.describe(cfg(tmp_path, image_size=32)).dtype == "uint8"  # native: no resize
  with pytest.raises(ConfigError, match="n_train"):
    data.describe(cfg(tmp_path, n_train=41))


# -------------------------------------------------------------------------- faults


class _Evil:
  def __reduce__(self):
    return (os.system, ("touch pwned",))


def _fault(tmp_path, case: str) -> str:
  """Break a written set; returns what the error must name."""
  batch = tmp_path / "data_batch_3"
  good = np.zeros((2, 3072), np.uint8)
  if case == "missing batch":
    os.remove(batch)
  elif case == "truncated pickle":
    batch.write_bytes(batch.read_bytes()[:-100])
  elif case == "not a pickle":
    batch.write_bytes(b"\x89PNG not a pickle at all")
  elif case == "code in the pickle":
    batch.write_bytes(pickle.dumps({b"data": _Evil()}))
  elif case == "not a dict":
    batch.write_bytes(pickle.dumps([1, 2, 3]))
  elif case == "no labels":
    batch.write_bytes(pickle.dumps({b"data": good, b"fine_labels": [0, 1]}))
  elif case == "str keys":
    batch.write_bytes(pickle.dumps({"data": good, "labels": [0, 1]}))
  elif case == "float pixels":
    write_batch(batch, good.astype(np.float32), [0, 1])
  elif case == "wrong row length":
    write_batch(batch, np.zeros((2, 3000), np.uint8), [0, 1])
  elif case == "no images":
    write_batch(batch, np.zeros((0, 3072), np.uint8), [])
  elif case == "labels per image":
    write_batch(batch, good, [0, 1, 2])
  elif case == "label out of range":
    write_batch(batch, good, [0, 10])
  elif case == "negative label":
    write_batch(batch, good, [-1, 0])
  return "data_batch_3"


FAULTS = ["missing batch", "truncated pickle", "not a pickle", "code in the pickle",
          "not a dict", "no labels", "str keys", "float pixels", "wrong row length",
          "no images", "labels per image", "label out of range", "negative label"]


@pytest.mark.parametrize("case", FAULTS)
def test_every_fault_is_one_config_error_on_data_dir_naming_the_file(tmp_path, case,
                                                                     monkeypatch):
  write_cifar(tmp_path)
  named = _fault(tmp_path, case)
  monkeypatch.chdir(tmp_path)
  for call in (data.describe, data.load):  # describe finds it before anything runs
    with pytest.raises(ConfigError) as e:
      call(cfg(tmp_path))
    assert e.value.field == "data.dir" and named in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
  assert not (tmp_path / "pwned").exists()


def test_cifar100_labels_go_to_99(tmp_path):
  write_cifar(tmp_path, "cifar100")
  write_batch(tmp_path / "test", np.zeros((2, 3072), np.uint8), [99, 100], "cifar100")
  with pytest.raises(ConfigError, match=r"test: label 100 at position 1; want 0\.\.99"):
    data.describe(cfg(tmp_path, "cifar100"))


@pytest.mark.parametrize("folder,match", [("", "downloads nothing"),
                                          ("no/such/folder", "an existing folder")])
def test_data_dir_must_be_a_folder(tmp_path, folder, match):
  with pytest.raises(ConfigError, match=match) as e:
    data.describe(cfg(tmp_path / folder if folder else "", "cifar10"))
  assert e.value.field == "data.dir"


def test_data_dir_is_refused_for_sets_that_read_none():
  with pytest.raises(ConfigError, match="cifar10") as e:
    data.describe(cfg("/tmp", "digits"))
  assert e.value.field == "data.dir"


def test_a_bad_cifar_folder_at_the_cli_is_one_line_exit_2_and_nothing_written(tmp_path):
  write_cifar(tmp_path / "cifar")
  _fault(tmp_path / "cifar", "truncated pickle")
  workdir = tmp_path / "runs"
  proc = subprocess.run(
      [sys.executable, "-m", "sgdlab.launch",
       f"--config={os.path.join(conftest.REPO, 'experiments', 'classic_batch_size.py')}:small",
       f"--workdir={workdir}", "--config.data.name=cifar10",
       f"--config.data.dir={tmp_path / 'cifar'}"],
      env=conftest.subprocess_env(1), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, lines
  assert lines[0].startswith(f"error: config.data.dir='{tmp_path / 'cifar'}' is invalid: ")
  assert "data_batch_3" in lines[0]
  assert not workdir.exists()


# ----------------------------------------------------------------- uint8 storage


def _tiny(folder, **overrides):
  return conftest.tiny_config(**{"data.name": "cifar10", "data.dir": str(folder),
                                 "batch_size": 8, "num_epochs": 2, "learning_rate": 0.05,
                                 **overrides})


def _assert_same_run(a, b):
  for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert a.steps["loss"] == b.steps["loss"]
  assert a.epochs["test_loss"] == b.epochs["test_loss"]
  assert a.epochs["test_accuracy"] == b.epochs["test_accuracy"]


@pytest.mark.parametrize("scale", [255.0, 16.0])
def test_the_steps_table_gives_the_hosts_float32_values(scale):
  pixels = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
  on_device = jax.jit(lambda x: pipeline.unit_images(x, scale))(pixels)
  want = images.to_unit(pixels, scale, 0)
  assert on_device.dtype == np.float32
  np.testing.assert_array_equal(np.asarray(on_device), want)


def test_uint8_storage_trains_exactly_as_float32_storage(tmp_path, mesh1):
  """The same parameters, losses and test metrics, bit for bit (the crops of the default
  augmentation pad with the same zeros)."""
  write_cifar(tmp_path)
  stored = data.load(cfg(tmp_path))
  unit = stored.unit()
  assert unit.x_train.dtype == np.float32 and unit.x_train.max() == 1.0
  runs = [trainer.train(_tiny(tmp_path), dataset=ds, mesh=mesh1) for ds in (stored, unit)]
  _assert_same_run(*runs)


def test_the_estimate_charges_one_byte_per_stored_pixel(tmp_path, mesh1):
  from sgdlab.memory import estimator  # pylint: disable=g-import-not-at-top
  write_cifar(tmp_path)
  est = estimator.Estimator(config_lib.resolve(_tiny(tmp_path), n_devices=1), mesh1)
  assert est.data_bytes == (40 + 20) * (32 * 32 * 3 + 4)
  assert est.trainer_total(8) > est.data_bytes  # the epoch program with its draws compiles
  resized = config_lib.resolve(_tiny(tmp_path, **{"data.image_size": 16}), n_devices=1)
  assert estimator.Estimator(resized, mesh1).data_bytes == (40 + 20) * (16 * 16 * 3 * 4 + 4)
