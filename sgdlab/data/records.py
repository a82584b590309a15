"""ArrayRecord shards of encoded images: TFDS's prepared layout, or plain files.

TFDS prepares a dataset (e.g. `tfds build imagenet2012 --file_format=array_record`) as
`<data_dir>/<name>/<version>/`: `dataset_info.json` (the splits, each with its shards'
record counts, `shardLengths`), `features.json` (the class count) and shards
`<name>-<split>.array_record-00000-of-01024`, each record one serialized
`tf.train.Example` with the features `image` (the encoded JPEG) and `label` (int64).
A plain folder holds the same records in `<split>.array_record` or
`<split>.array_record-00000-of-00008` files. Records are parsed here from protobuf's
wire format (`parse_example`), so neither TensorFlow nor TFDS is needed to read them.

Every shard is opened and counted before anything compiles, and its first and last
records are checked (a JPEG, a label inside the classes): a missing, truncated or
miscounted shard is one ConfigError naming data.dir. Reading ImageNet in full to check
every record is not done; a bad record past the first is named when it is read.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import struct
from typing import Any, Iterable, Sequence

from sgdlab.errors import ConfigError

SUFFIX = ".array_record"
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})$")

# --------------------------------------------------------------- tf.train.Example wire format
# Example{1: Features}; Features{1: map<string, Feature>} (entries {1: key, 2: value});
# Feature{1: BytesList, 2: FloatList, 3: Int64List}, each {1: repeated value}.


def _varint(data: bytes, at: int) -> tuple[int, int]:
  value = shift = 0
  while True:
    if at >= len(data):
      raise ValueError("truncated varint")
    byte = data[at]
    value |= (byte & 0x7F) << shift
    at, shift = at + 1, shift + 7
    if byte < 0x80:
      return value, at


def _fields(data: bytes) -> Iterable[tuple[int, int, Any]]:
  """(field number, wire type, value) of one message: ints for varints, bytes else."""
  at = 0
  while at < len(data):
    key, at = _varint(data, at)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, at = _varint(data, at)
    elif wire == 2:
      size, at = _varint(data, at)
      value, at = data[at:at + size], at + size
      if len(value) != size:
        raise ValueError("truncated field")
    elif wire in (1, 5):
      width = 8 if wire == 1 else 4
      value, at = data[at:at + width], at + width
    else:
      raise ValueError(f"wire type {wire}")
    yield number, wire, value


def _signed(value: int) -> int:
  return value - (1 << 64) if value >= 1 << 63 else value


def _feature(data: bytes) -> list:
  for kind, _, payload in _fields(data):
    values: list = []
    for _, wire, v in _fields(payload):
      if kind == 1:
        values.append(bytes(v))
      elif kind == 2:
        values.extend(struct.unpack(f"<{len(v) // 4}f", v) if wire == 2 else
                      struct.unpack("<f", v))
      elif kind == 3 and wire == 2:  # packed
        at = 0
        while at < len(v):
          n, at = _varint(v, at)
          values.append(_signed(n))
      elif kind == 3:
        values.append(_signed(v))
    return values
  return []


def parse_example(record: bytes) -> dict[str, list]:
  """A serialized tf.train.Example as {feature name: list of bytes, floats or ints}."""
  out: dict[str, list] = {}
  for number, _, features in _fields(record):
    if number != 1:
      continue
    for _, _, entry in _fields(features):
      key, value = b"", b""
      for n, _, v in _fields(entry):
        key, value = (v, value) if n == 1 else (key, v)
      out[key.decode()] = _feature(value)
  return out


def _put_varint(value: int) -> bytes:
  value &= (1 << 64) - 1
  out = bytearray()
  while value >= 0x80:
    out.append(value & 0x7F | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _put(number: int, payload: bytes) -> bytes:
  return _put_varint(number << 3 | 2) + _put_varint(len(payload)) + payload


def encode_example(features: dict[str, bytes | int | Sequence[int]]) -> bytes:
  """A tf.train.Example of bytes features (BytesList) and int features (Int64List,
  packed), as TFDS serializes an image and its label."""
  entries = b""
  for key, value in features.items():
    if isinstance(value, bytes):
      feature = _put(1, _put(1, value))
    else:
      ints = [value] if isinstance(value, int) else list(value)
      feature = _put(3, _put(1, b"".join(_put_varint(int(i)) for i in ints)))
    entries += _put(1, _put(1, key.encode()) + _put(2, feature))
  return _put(1, entries)


# --------------------------------------------------------------- layouts


@dataclasses.dataclass(frozen=True)
class Split:
  """One split's shards in order and their record counts."""

  name: str
  paths: tuple[str, ...]
  lengths: tuple[int, ...]

  @property
  def size(self) -> int:
    return sum(self.lengths)


def _tfds_version_dir(root: str, name: str) -> str:
  """root itself when it holds dataset_info.json, else root/<name>/<newest version>."""
  if os.path.isfile(os.path.join(root, "dataset_info.json")):
    return root
  found = glob.glob(os.path.join(root, name, "*", "dataset_info.json"))
  if not found:
    raise ConfigError("data.dir", root, f"a TFDS folder of {name} (with dataset_info.json, "
                      f"or <dir>/{name}/<version>/dataset_info.json); none found")
  version = lambda p: tuple(int(v) for v in re.findall(r"\d+", os.path.basename(  # noqa: E731
      os.path.dirname(p))))
  return os.path.dirname(max(found, key=version))


def tfds_splits(root: str, name: str) -> tuple[dict[str, Split], int]:
  """The splits TFDS recorded for a prepared dataset, and its class count."""
  folder = _tfds_version_dir(root, name)
  info = json.load(open(os.path.join(folder, "dataset_info.json")))
  if info.get("fileFormat", "array_record") != "array_record":
    raise ConfigError("data.dir", folder, "a TFDS dataset prepared as array_record (this one "
                      f"is {info.get('fileFormat')}; tfds build --file_format=array_record)")
  splits = {}
  for s in info.get("splits", []):
    lengths = tuple(int(n) for n in s.get("shardLengths", []))
    paths = tuple(os.path.join(folder, f"{info['name']}-{s['name']}{SUFFIX}-{i:05d}-of-"
                               f"{len(lengths):05d}") for i in range(len(lengths)))
    splits[s["name"]] = Split(s["name"], paths, lengths)
  features = os.path.join(folder, "features.json")
  try:
    label = json.load(open(features))["featuresDict"]["features"]["label"]
    num_classes = int(label["classLabel"]["numClasses"])
  except (OSError, KeyError, ValueError):
    raise ConfigError("data.dir", folder, "a TFDS folder whose features.json has a "
                      "ClassLabel 'label' (its class count)") from None
  return splits, num_classes


def plain_split(root: str, name: str) -> Split | None:
  """`<name>.array_record` or its numbered shards in root, counted; None if absent."""
  one = os.path.join(root, name + SUFFIX)
  paths = sorted(glob.glob(glob.escape(one) + "-*-of-*"))
  if os.path.exists(one):
    paths = [one]
  if not paths:
    return None
  return Split(name, tuple(paths), tuple(count(p) for p in paths))


def count(path: str) -> int:
  """Records in one shard; ConfigError if it is missing or not a whole ArrayRecord file."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise ConfigError("data.dir", os.path.dirname(path),
                      f"a folder with every shard; {os.path.basename(path)} is missing")
  try:  # a cut file fails to open, or (cut elsewhere) to close
    reader = array_record_module.ArrayRecordReader(path)
    n = int(reader.num_records())
    reader.close()
  except RuntimeError as e:
    raise ConfigError("data.dir", os.path.dirname(path), f"whole ArrayRecord shards; "
                      f"{os.path.basename(path)} is truncated or corrupt ({str(e)[:80]})"
                      ) from None
  return n


def check_split(split: Split, num_classes: int, declared: bool) -> None:
  """Each shard opens with its declared count (TFDS), and its first and last records
  are a JPEG with a label in [0, num_classes)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  for path, length in zip(split.paths, split.lengths):
    got = count(path) if declared else length
    where = f"{os.path.basename(path)}"
    if got != length:
      raise ConfigError("data.dir", os.path.dirname(path), f"shards as dataset_info.json "
                        f"counts them; {where} has {got} records, not {length}")
    if not length:
      continue
    reader = array_record_module.ArrayRecordReader(path)
    try:
      for i, record in zip((0, length - 1), reader.read([0, length - 1])):
        check_record(record, num_classes, f"{where} record {i}", os.path.dirname(path))
    finally:
      reader.close()


def check_record(record: bytes, num_classes: int, where: str, folder: str) -> tuple[bytes, int]:
  """(image bytes, label) of one record, or a ConfigError naming it."""
  try:
    example = parse_example(record)
  except ValueError:
    example = {}
  image, label = example.get("image", [b""]), example.get("label", [])
  if not image or not image[0].startswith(b"\xff\xd8"):
    raise ConfigError("data.dir", folder, f"records whose 'image' is a JPEG; {where} is not")
  if len(label) != 1 or not 0 <= label[0] < num_classes:
    raise ConfigError("data.dir", folder, f"labels in [0, {num_classes}); {where} has "
                      f"label {label}")
  return image[0], int(label[0])
