"""Tiny ImageNet-format data for the tests: generated JPEGs of varied sizes in TFDS's
prepared layout (records serialized by protobuf itself, from a schema with
tf.train.Example's field numbers) and in a plain ArrayRecord folder."""

from __future__ import annotations

import io
import json
import os

import numpy as np
from array_record.python import array_record_module
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from PIL import Image

from sgdlab.data import records

NAME, VERSION = "imagenet2012", "5.1.0"


def _example_class():
  """tf.train.Example as tensorflow/core/example/{example,feature}.proto declare it."""
  f = descriptor_pb2.FileDescriptorProto(name="sgdlab_test_example.proto",
                                         package="sgdlab_test", syntax="proto3")
  T = descriptor_pb2.FieldDescriptorProto
  def message(name, fields):
    m = f.message_type.add(name=name)
    for field_name, number, kind, label, type_name in fields:
      field = m.field.add(name=field_name, number=number, type=kind, label=label)
      if type_name:
        field.type_name = type_name
    return m
  rep, opt = T.LABEL_REPEATED, T.LABEL_OPTIONAL
  message("BytesList", [("value", 1, T.TYPE_BYTES, rep, "")])
  message("FloatList", [("value", 1, T.TYPE_FLOAT, rep, "")])
  message("Int64List", [("value", 1, T.TYPE_INT64, rep, "")])
  feature = message("Feature", [("bytes_list", 1, T.TYPE_MESSAGE, opt, ".sgdlab_test.BytesList"),
                                ("float_list", 2, T.TYPE_MESSAGE, opt, ".sgdlab_test.FloatList"),
                                ("int64_list", 3, T.TYPE_MESSAGE, opt, ".sgdlab_test.Int64List")])
  feature.oneof_decl.add(name="kind")
  for field in feature.field:
    field.oneof_index = 0
  features = message("Features", [("feature", 1, T.TYPE_MESSAGE, rep,
                                   ".sgdlab_test.Features.FeatureEntry")])
  entry = features.nested_type.add(name="FeatureEntry")
  entry.options.map_entry = True
  entry.field.add(name="key", number=1, type=T.TYPE_STRING, label=opt)
  entry.field.add(name="value", number=2, type=T.TYPE_MESSAGE, label=opt,
                  type_name=".sgdlab_test.Feature")
  message("Example", [("features", 1, T.TYPE_MESSAGE, opt, ".sgdlab_test.Features")])
  pool = descriptor_pool.DescriptorPool()
  pool.Add(f)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("sgdlab_test.Example"))


Example = _example_class()


def serialize(image: bytes, label: int, file_name: str = "") -> bytes:
  """One record as TFDS writes ImageNet's: image, label and file_name features."""
  e = Example()
  e.features.feature["image"].bytes_list.value.append(image)
  e.features.feature["label"].int64_list.value.append(label)
  e.features.feature["file_name"].bytes_list.value.append(file_name.encode())
  return e.SerializeToString()


def jpegs(n: int, seed: int = 0) -> list[bytes]:
  """n JPEGs of varied sizes and aspect ratios (some grayscale), smooth with noise."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    h, w = int(rng.integers(36, 120)), int(rng.integers(36, 160))
    base = rng.uniform(0, 255, (3, 4, 3))
    image = np.asarray(Image.fromarray(base.astype(np.uint8)).resize((w, h), Image.BILINEAR))
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    pil = Image.fromarray(image)
    if i % 7 == 3:
      pil = pil.convert("L")
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=90)
    out.append(buf.getvalue())
  return out


def examples(n: int, num_classes: int, seed: int) -> list[tuple[bytes, int]]:
  labels = np.random.default_rng(seed + 100).integers(0, num_classes, n)
  return list(zip(jpegs(n, seed), (int(y) for y in labels)))


def _write_shards(paths: list[str], rows: list[bytes]) -> list[int]:
  lengths, bounds = [], np.linspace(0, len(rows), len(paths) + 1).astype(int)
  for i, path in enumerate(paths):  # contiguous, as TFDS shards a split
    part = rows[bounds[i]:bounds[i + 1]]
    writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
    for record in part:
      writer.write(record)
    writer.close()
    lengths.append(len(part))
  return lengths


def write_tfds(root, splits: dict[str, list[tuple[bytes, int]]], num_classes: int = 10,
               shards: int = 2) -> str:
  """root/imagenet2012/5.1.0 as `tfds build --file_format=array_record` leaves it;
  returns root (TFDS' data_dir)."""
  folder = os.path.join(str(root), NAME, VERSION)
  os.makedirs(folder, exist_ok=True)
  info = {"name": NAME, "version": VERSION, "fileFormat": "array_record", "splits": []}
  for split, rows in splits.items():
    paths = [os.path.join(folder, f"{NAME}-{split}.array_record-{i:05d}-of-{shards:05d}")
             for i in range(shards)]
    lengths = _write_shards(paths, [serialize(x, y, f"{split}_{j}.JPEG")
                                    for j, (x, y) in enumerate(rows)])
    info["splits"].append({"name": split, "shardLengths": [str(n) for n in lengths],
                           "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"})
  json.dump(info, open(os.path.join(folder, "dataset_info.json"), "w"))
  features = {"featuresDict": {"features": {
      "image": {"pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
                "image": {"shape": {"dimensions": ["-1", "-1", "3"]}, "dtype": "uint8",
                          "encodingFormat": "jpeg"}},
      "label": {"pythonClassName": "tensorflow_datasets.core.features.class_label_feature"
                ".ClassLabel", "classLabel": {"numClasses": str(num_classes)}},
      "file_name": {"pythonClassName": "tensorflow_datasets.core.features.text_feature.Text",
                    "text": {}}}}}
  json.dump(features, open(os.path.join(folder, "features.json"), "w"))
  return str(root)


def write_plain(root, splits: dict[str, list[tuple[bytes, int]]], shards: int = 1) -> str:
  """`<split>.array_record` (or numbered shards) of records sgdlab encodes itself."""
  os.makedirs(str(root), exist_ok=True)
  for split, rows in splits.items():
    if shards == 1:
      paths = [os.path.join(str(root), f"{split}.array_record")]
    else:
      paths = [os.path.join(str(root), f"{split}.array_record-{i:05d}-of-{shards:05d}")
               for i in range(shards)]
    _write_shards(paths, [records.encode_example({"image": x, "label": y}) for x, y in rows])
  return str(root)
