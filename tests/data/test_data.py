"""Tests for sgdlab.data: IDX parsing, the bundled splits, teacher-student data, resizing."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct

import numpy as np
import pytest

from sgdlab import data
from sgdlab.data import idx, sources
from sgdlab.data import images as image_ops
from sgdlab.errors import ConfigError


def _cfg(**overrides):
  cfg = data.default_config()
  cfg.update(overrides)
  return cfg


def _idx_bytes(code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
  """An IDX file built by hand, independent of write_idx."""
  return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


def _write(path, raw: bytes, gz: bool):
  with open(path, "wb") as f:
    f.write(gzip.compress(raw) if gz else raw)


# ---------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("name,gz", [("img", False), ("img.gz", True), ("img-no-ext", True)])
def test_read_idx_uint8_images_and_labels(tmp_path, name, gz):
  images = (np.arange(3 * 4 * 5) * 7 % 256).astype(np.uint8).reshape(3, 4, 5)
  labels = np.array([9, 0, 4], np.uint8)
  _write(tmp_path / name, _idx_bytes(0x08, (3, 4, 5), images.tobytes()), gz)
  _write(tmp_path / f"lab-{name}", _idx_bytes(0x08, (3,), labels.tobytes()), gz)
  got = idx.read_idx(tmp_path / name)  # gzip is found by its magic bytes, not the name
  assert got.dtype == np.uint8 and got.shape == (3, 4, 5)
  np.testing.assert_array_equal(got, images)
  np.testing.assert_array_equal(idx.read_idx(str(tmp_path / f"lab-{name}")), labels)


def test_read_idx_big_endian_numbers(tmp_path):
  ints = [-2**31, -1, 0, 7, 2**31 - 1]
  floats = [-1.5, 0.0, 3.25, 1e30]
  _write(tmp_path / "i", _idx_bytes(0x0C, (5,), struct.pack(">5i", *ints)), gz=False)
  _write(tmp_path / "f", _idx_bytes(0x0D, (2, 2), struct.pack(">4f", *floats)), gz=True)
  _write(tmp_path / "s", _idx_bytes(0x0B, (2,), struct.pack(">2h", -300, 300)), gz=False)
  got_i, got_f = idx.read_idx(tmp_path / "i"), idx.read_idx(tmp_path / "f")
  assert got_i.dtype == np.int32 and got_i.dtype.isnative
  np.testing.assert_array_equal(got_i, ints)
  assert got_f.dtype == np.float32 and got_f.shape == (2, 2)
  np.testing.assert_array_equal(got_f.ravel(), np.float32(floats))
  np.testing.assert_array_equal(idx.read_idx(tmp_path / "s"), [-300, 300])


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32,
                                   np.float64])
def test_write_idx_round_trips(tmp_path, dtype, suffix):
  array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
  path = tmp_path / f"a{suffix}"
  idx.write_idx(path, array)
  assert _is_gz(path) == (suffix == ".gz")
  got = idx.read_idx(path)
  assert got.dtype == array.dtype and got.flags.writeable
  np.testing.assert_array_equal(got, array)


def _is_gz(path) -> bool:
  with open(path, "rb") as f:
    return f.read(2) == b"\x1f\x8b"


def test_write_idx_matches_the_format_byte_for_byte(tmp_path):
  idx.write_idx(tmp_path / "a", np.array([[1, -2]], np.int32))
  want = _idx_bytes(0x0C, (1, 2), struct.pack(">2i", 1, -2))
  assert (tmp_path / "a").read_bytes() == want


def test_write_idx_rejects_unstorable_dtype(tmp_path):
  with pytest.raises(ValueError, match="int64"):
    idx.write_idx(tmp_path / "a", np.zeros(3, np.int64))


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated_names_the_file(tmp_path, gz):
  path = tmp_path / "short-images"
  _write(path, _idx_bytes(0x08, (2, 28, 28), bytes(2 * 28 * 28 - 5)), gz)
  with pytest.raises(ValueError, match=r"short-images.*truncated"):
    idx.read_idx(path)


def test_read_idx_truncated_gzip_stream(tmp_path):
  raw = gzip.compress(_idx_bytes(0x08, (100, 28, 28), os.urandom(100 * 28 * 28)))
  path = tmp_path / "cut.gz"
  path.write_bytes(raw[:len(raw) // 2])
  with pytest.raises(ValueError, match=r"cut\.gz.*truncated"):
    idx.read_idx(path)


def test_read_idx_trailing_bytes(tmp_path):
  _write(tmp_path / "long", _idx_bytes(0x08, (4,), bytes(6)), gz=False)
  with pytest.raises(ValueError, match="long.*trailing"):
    idx.read_idx(tmp_path / "long")


def test_read_idx_bad_magic_and_dtype(tmp_path):
  (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + bytes(8))
  with pytest.raises(ValueError, match="bad.*magic"):
    idx.read_idx(tmp_path / "bad")
  _write(tmp_path / "code", _idx_bytes(0x0A, (1,), bytes(1)), gz=False)
  with pytest.raises(ValueError, match="code.*dtype code 0x0A"):
    idx.read_idx(tmp_path / "code")
  (tmp_path / "tiny").write_bytes(b"\0\0")
  with pytest.raises(ValueError, match="tiny.*truncated"):
    idx.read_idx(tmp_path / "tiny")


# ------------------------------------------------------------------- IDX folders


def _make_idx_dir(root, n_train=60, n_test=20, side=28, seed=0, dotted=False):
  """The four MNIST files, mixing plain and gzip as downloads do."""
  rng = np.random.default_rng(seed)
  arrays = {
      "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
      "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
      "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
      "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
  }
  for i, (name, array) in enumerate(arrays.items()):
    if dotted:
      name = name.replace("-idx", ".idx")
    raw = _idx_bytes(0x08, array.shape, array.tobytes())
    _write(os.path.join(root, name + (".gz" if i % 2 else "")), raw, gz=bool(i % 2))
  return arrays


@pytest.mark.parametrize("dotted", [False, True])
def test_load_idx_dir(tmp_path, dotted):
  arrays = _make_idx_dir(tmp_path, dotted=dotted)
  ds = data.load(_cfg(dir=str(tmp_path), test_fraction=0.9))  # official split: ignored
  assert (ds.n_train, ds.n_test, ds.input_shape, ds.num_classes) == (60, 20, (28, 28, 1), 10)
  assert ds.x_train.dtype == ds.x_test.dtype == np.uint8 and ds.scale == 255.0  # as stored
  assert ds.y_train.dtype == ds.y_test.dtype == np.int32
  np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"])
  np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
  np.testing.assert_array_equal(ds.x_test[..., 0], arrays["t10k-images-idx3-ubyte"])
  unit = ds.unit()  # what the step computes on
  assert unit.x_train.dtype == np.float32 and unit.scale == 1.0
  assert unit.x_train.min() >= 0.0 and unit.x_train.max() <= 1.0
  np.testing.assert_allclose(unit.x_test[..., 0], arrays["t10k-images-idx3-ubyte"] / 255.0,
                             rtol=1e-6)


def test_load_idx_dir_n_train_keeps_the_first(tmp_path):
  arrays = _make_idx_dir(tmp_path)
  ds = data.load(_cfg(dir=str(tmp_path), n_train=7))
  assert ds.n_train == 7 and ds.n_test == 20
  np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"][:7])
  with pytest.raises(ConfigError, match="n_train"):
    data.describe(_cfg(dir=str(tmp_path), n_train=61))


def test_missing_idx_file_is_named(tmp_path):
  _make_idx_dir(tmp_path)
  os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
  with pytest.raises(ConfigError, match="t10k-labels-idx1-ubyte") as e:
    data.describe(_cfg(dir=str(tmp_path)))
  assert e.value.field == "data.dir"


def test_corrupt_idx_file_is_named(tmp_path):
  _make_idx_dir(tmp_path)
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(path.read_bytes()[:-10])
  with pytest.raises(ConfigError, match="train-images-idx3-ubyte.*truncated"):
    data.describe(_cfg(dir=str(tmp_path)))


def test_corrupt_gzip_idx_file_is_named(tmp_path):
  _make_idx_dir(tmp_path)
  path = tmp_path / "train-labels-idx1-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-3])
  with pytest.raises(ConfigError, match="train-labels-idx1-ubyte.gz"):
    data.describe(_cfg(dir=str(tmp_path)))


def test_mismatched_counts_are_rejected(tmp_path):
  _make_idx_dir(tmp_path)
  idx.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(59, np.uint8))
  with pytest.raises(ConfigError, match="60 images.*59 labels"):
    data.describe(_cfg(dir=str(tmp_path)))


def test_describe_reads_only_headers(tmp_path):
  # A 512px set of 60000 images would be 15.7 GB; a sparse file costs no disk.
  n, side = 60000, 512
  _make_idx_dir(tmp_path, n_train=1, n_test=1)
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(_idx_bytes(0x08, (n, side, side), b""))
  with open(path, "r+b") as f:
    f.truncate(16 + n * side * side)
  idx.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(n, np.uint8))
  idx.write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((1, side, side), np.uint8))
  spec = data.describe(_cfg(dir=str(tmp_path), image_size=128))
  assert spec == data.DataSpec("mnist", (128, 128, 1), 10, n, 1)


def test_load_resizes_large_idx_images_in_chunks(tmp_path):
  _make_idx_dir(tmp_path, n_train=1, n_test=1)
  n, side = 150, 512
  images = np.full((n, side, side), 51, np.uint8)  # 0.2 after scaling
  idx.write_idx(tmp_path / "train-images-idx3-ubyte", images)
  idx.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)
  idx.write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:1])
  ds = data.load(_cfg(dir=str(tmp_path), image_size=64))
  assert ds.x_train.shape == (n, 64, 64, 1) and ds.x_test.shape == (1, 64, 64, 1)
  np.testing.assert_allclose(ds.x_train, 0.2, atol=1e-6)


# --------------------------------------------------------------------- validation


def test_validate_lists_valid_names():
  with pytest.raises(ConfigError, match="mnist.*digits.*synthetic") as e:
    data.describe(_cfg(name="cifar"))
  assert e.value.field == "data.name"


@pytest.mark.parametrize("overrides,field", [
    (dict(image_size=-1), "data.image_size"),
    (dict(test_fraction=0.0), "data.test_fraction"),
    (dict(test_fraction=1.0), "data.test_fraction"),
    (dict(name="digits", test_fraction=1e-4), "data.test_fraction"),  # empty test split
    (dict(n_train=-1), "data.n_train"),
    (dict(n_train=4001), "data.n_train"),
    (dict(dir="/no/such/folder"), "data.dir"),
    (dict(name="digits", dir="/tmp"), "data.dir"),
    (dict(name="synthetic", synthetic_n_train=0), "data.synthetic_n_train"),
    (dict(name="synthetic", synthetic_n_test=0), "data.synthetic_n_test"),
    (dict(name="synthetic", synthetic_input_shape=(28, 0)), "data.synthetic_input_shape"),
    (dict(name="synthetic", synthetic_num_classes=1), "data.synthetic_num_classes"),
    (dict(name="synthetic", synthetic_label_noise=1.5), "data.synthetic_label_noise"),
    (dict(name="synthetic", image_size=14), "data.image_size"),
])
def test_validate_rejects(overrides, field):
  with pytest.raises(ConfigError) as e:
    data.describe(_cfg(**overrides))
  assert e.value.field == field
  assert str(e.value).startswith(f"config.{field}=")


# ------------------------------------------------------------------ bundled sets


@pytest.fixture(scope="module")
def mnist():
  return data.load(_cfg())


def _row_hashes(x: np.ndarray) -> set[bytes]:
  return {hashlib.sha1(row.tobytes()).digest() for row in x}


def test_bundled_mnist_split(mnist):
  assert (mnist.n_train, mnist.n_test, mnist.input_shape) == (4000, 1000, (28, 28, 1))
  assert mnist.x_train.dtype == np.uint8 and mnist.y_train.dtype == np.int32
  assert mnist.scale == 255.0 and mnist.x_train.min() == 0 and mnist.x_train.max() == 255
  np.testing.assert_array_equal(np.bincount(mnist.y_train), [400] * 10)
  np.testing.assert_array_equal(np.bincount(mnist.y_test), [100] * 10)
  assert not _row_hashes(mnist.x_train) & _row_hashes(mnist.x_test)
  assert len(_row_hashes(mnist.x_train)) + len(_row_hashes(mnist.x_test)) == 5000
  # Classes are interleaved, so a small n_train still sees every class.
  assert np.bincount(mnist.y_train[:500], minlength=10).min() >= 25


def test_bundled_mnist_is_deterministic(mnist):
  again = data.load(_cfg(n_train=100))
  np.testing.assert_array_equal(again.x_train, mnist.x_train[:100])
  np.testing.assert_array_equal(again.y_train, mnist.y_train[:100])
  np.testing.assert_array_equal(again.x_test, mnist.x_test)


def test_split_seed_changes_the_split():
  y = np.repeat(np.arange(3), 20)
  a_train, a_test = sources._stratified_split(y, 0.25, seed=0)
  b_train, _ = sources._stratified_split(y, 0.25, seed=1)
  assert not np.array_equal(a_train, b_train)
  np.testing.assert_array_equal(np.bincount(y[a_test]), [5, 5, 5])
  assert sorted(np.concatenate([a_train, a_test])) == list(range(60))


def test_digits():
  ds = data.load(_cfg(name="digits"))
  assert ds.input_shape == (8, 8, 1) and ds.num_classes == 10
  assert ds.n_train + ds.n_test == 1797 and ds.n_test == 359  # sum of per-class rounding
  assert ds.x_train.dtype == np.uint8 and ds.scale == 16.0 and ds.x_train.max() == 16
  assert ds.unit().x_train.max() == 1.0 and ds.unit().x_train.dtype == np.float32


# --------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_shaped():
  cfg = _cfg(name="synthetic", synthetic_input_shape=(6, 5), synthetic_n_train=300,
             synthetic_n_test=50, synthetic_num_classes=3)
  a, b = data.load(cfg), data.load(cfg)
  assert a.x_train.shape == (300, 6, 5) and a.x_test.shape == (50, 6, 5)
  assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int32
  np.testing.assert_array_equal(a.x_train, b.x_train)
  np.testing.assert_array_equal(a.y_train, b.y_train)
  c = data.load(_cfg(**{**cfg.to_dict(), "synthetic_seed": 1}))
  assert not np.array_equal(a.x_train, c.x_train)
  assert a.y_train.max() < 3


def test_synthetic_labels_cover_all_classes():
  ds = data.load(_cfg(name="synthetic"))
  assert (ds.n_train, ds.n_test, ds.input_shape) == (4096, 1024, (28, 28, 1))
  counts = np.bincount(ds.y_train, minlength=10)
  assert counts.min() > 4096 / 10 / 4, counts  # every class, none starved


def test_synthetic_label_noise():
  clean = data.load(_cfg(name="synthetic", synthetic_n_train=2000, synthetic_n_test=100))
  noisy = data.load(_cfg(name="synthetic", synthetic_n_train=2000, synthetic_n_test=100,
                         synthetic_label_noise=0.2))
  np.testing.assert_array_equal(clean.x_train, noisy.x_train)
  np.testing.assert_array_equal(clean.y_test, noisy.y_test)  # test labels stay clean
  assert np.mean(clean.y_train != noisy.y_train) == pytest.approx(0.2, abs=0.01)


# ------------------------------------------------------------------------ resize


def test_resize_shapes_and_constants():
  images = np.full((3, 20, 12, 2), 0.7, np.float32)
  for size in (5, 8, 31):
    out = image_ops.resize(images, size)
    assert out.shape == (3, size, size, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.7, rtol=1e-6)
  assert image_ops.resize(images, 0) is images
  square = images[:, :12]
  assert image_ops.resize(square, 12) is square


def test_resize_matches_jax_antialiased_linear():
  import jax  # pylint: disable=g-import-not-at-top
  images = np.random.default_rng(0).random((2, 28, 28, 3), dtype=np.float32)
  for size in (14, 9, 40):
    want = jax.image.resize(images, (2, size, size, 3), "linear", antialias=True)
    np.testing.assert_allclose(image_ops.resize(images, size), np.asarray(want), atol=1e-5)


def test_resize_uint8_input():
  images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 1), dtype=np.uint8)
  out = image_ops.resize(images, 8)
  assert out.dtype == np.float32 and 0 <= out.min() and out.max() <= 255


# ---------------------------------------------------------------------- describe


@pytest.mark.parametrize("overrides", [
    dict(name="digits"),
    dict(name="digits", image_size=16, n_train=100),
    dict(name="digits", test_fraction=0.33),
    dict(name="synthetic", synthetic_input_shape=(7, 3, 2, 1), synthetic_n_train=64,
         synthetic_n_test=8, synthetic_num_classes=4),
    dict(name="synthetic", synthetic_n_train=64, synthetic_n_test=8, n_train=10),
    dict(name="idx"),
    dict(name="idx", image_size=14, n_train=5),
])
def test_describe_matches_load(tmp_path, overrides):
  if overrides.get("name") == "idx":
    _make_idx_dir(tmp_path)
    overrides = {**overrides, "name": "mnist", "dir": str(tmp_path)}
  cfg = _cfg(**overrides)
  assert data.describe(cfg) == data.load(cfg).spec()


def test_describe_matches_bundled_mnist(mnist):
  assert data.describe(_cfg()) == mnist.spec()
  assert data.describe(_cfg(image_size=14)).input_shape == (14, 14, 1)
