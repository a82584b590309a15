"""IDX files (the format of MNIST and Fashion-MNIST), plain or gzip, read and written.

Headers are read without touching pixels, so shapes of large files are free to learn,
and `idx_headers` turns every fault of a data.dir folder into one ConfigError.
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

# IDX files of the official MNIST / Fashion-MNIST split, keyed by role.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_NUM_CLASSES = 10

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


def idx_headers(cfg: ml_collections.ConfigDict) -> dict[str, tuple[str, _IdxHeader]]:
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
  if image_shape(train[1].shape) != image_shape(test[1].shape):
    raise ConfigError("data.dir", cfg.dir, f"{train[0]} images are "
                      f"{train[1].shape[1:]} but {test[0]} images are {test[1].shape[1:]}")
  return found


def image_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """[n, H, W] or [n, H, W, C] -> (H, W, C)."""
  return tuple(shape[1:]) if len(shape) == 4 else (*shape[1:], 1)

