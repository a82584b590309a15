"""ImageNet's formats: TFDS-prepared ArrayRecord shards and plain ArrayRecord files of
generated JPEGs, streamed by grain, cropped on the host, trained through the launcher."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import conftest
import imagenet_support as support
from sgdlab import config as config_lib, data, trainer
from sgdlab.data import records
from sgdlab.errors import ConfigError
from sgdlab.train import run as run_lib

N_TRAIN, N_TEST, CLASSES = 48, 12, 10


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("imagenet")
  splits = {"train": support.examples(N_TRAIN, CLASSES, 0),
            "validation": support.examples(N_TEST, CLASSES, 1)}
  return {"imagenet2012": support.write_tfds(root / "tfds", splits, CLASSES, shards=3),
          "array_record": support.write_plain(root / "plain", splits, shards=1)}


def imagenet_config(folder, name="imagenet2012", **overrides):
  fields = {"data.name": name, "data.dir": folder, "data.pipeline": "grain",
            "data.image_size": 32, "data.eval_resize": 36, "data.read_threads": 2,
            "batch_size": 8, "num_epochs": 2, "learning_rate": 0.05,
            "data.synthetic_input_shape": (8, 8, 1)}
  if name == "array_record":
    fields["data.num_classes"] = CLASSES
  return conftest.tiny_config(**{**fields, **overrides})


def test_records_are_tf_examples_in_both_directions():
  record = support.serialize(b"\xff\xd8jpeg", 7, "n01440764_10026.JPEG")
  assert records.parse_example(record) == {"image": [b"\xff\xd8jpeg"], "label": [7],
                                           "file_name": [b"n01440764_10026.JPEG"]}
  parsed = support.Example()
  parsed.ParseFromString(records.encode_example({"image": b"\xff\xd8x", "label": [-5, 300]}))
  assert list(parsed.features.feature["label"].int64_list.value) == [-5, 300]
  assert parsed.features.feature["image"].bytes_list.value == [b"\xff\xd8x"]
  with pytest.raises(ValueError):
    records.parse_example(record[:-3])


@pytest.mark.parametrize("name", ["imagenet2012", "array_record"])
def test_both_layouts_describe_their_splits(folders, name):
  spec = data.describe(imagenet_config(folders[name], name).data)
  assert (spec.n_train, spec.n_test, spec.num_classes) == (N_TRAIN, N_TEST, CLASSES)
  assert spec.input_shape == (32, 32, 3) and spec.dtype == "uint8" and spec.scale == 255.0


def test_a_tfds_data_dir_or_its_version_folder_both_open(folders):
  version = os.path.join(folders["imagenet2012"], "imagenet2012", "5.1.0")
  assert data.describe(imagenet_config(version).data).n_train == N_TRAIN


def _batches(folder, mesh, name="imagenet2012", steps=6, **overrides):
  resolved = config_lib.resolve(imagenet_config(folder, name, **overrides),
                                n_devices=mesh.size)
  run = run_lib.create_run(resolved, mesh=mesh, compile_now=False)
  return run, [run.stream.take(1) for _ in range(steps)]


def test_batches_are_identical_on_1_and_8_devices_and_in_both_layouts(folders, mesh1, mesh8):
  _, one = _batches(folders["imagenet2012"], mesh1)
  _, eight = _batches(folders["imagenet2012"], mesh8)
  _, plain = _batches(folders["array_record"], mesh8, "array_record")
  for a, b, c in zip(one, eight, plain):
    for key in ("x", "y", "mask"):
      np.testing.assert_array_equal(a[key], b[key])
      np.testing.assert_array_equal(a[key], c[key])
  assert one[0]["x"].dtype == np.uint8 and one[0]["x"].shape == (1, 8, 32, 32, 3)
  assert "draw" not in one[0]  # cropped on the host: nothing for the step to crop


def test_crops_change_by_epoch_and_evaluation_crops_are_fixed(folders, mesh1):
  run, _ = _batches(folders["imagenet2012"], mesh1, steps=0)
  order = [jax.device_get(run.order(e)) for e in (0, 1)]
  source = run.sources["train"]
  i = int(order[0]["idx"][0, 0])
  at = [np.argwhere(o["idx"] == i)[0] for o in order]
  crops = [source.batch(np.asarray([i]), o["draw"][tuple(a)][None])[0][0]
           for o, a in zip(order, at)]
  assert not np.array_equal(crops[0], crops[1])  # another epoch, another draw
  again = source.batch(np.asarray([i]), order[0]["draw"][tuple(at[0])][None])[0][0]
  np.testing.assert_array_equal(crops[0], again)
  test = run.sources["test"]
  np.testing.assert_array_equal(test.batch(np.arange(4))[0], test.batch(np.arange(4))[0])


@pytest.mark.parametrize("name", ["imagenet2012", "array_record"])
def test_both_layouts_train_and_evaluate(folders, mesh1, name):
  history = trainer.train(imagenet_config(folders[name], name), mesh=mesh1)
  assert len(history.epochs["test_accuracy"]) == 2
  assert all(np.isfinite(history.steps["loss"]))


# Both layouts train in-process above; through the launcher, the plain one with -m slow.
@pytest.mark.parametrize("name", ["imagenet2012",
                                  pytest.param("array_record", marks=pytest.mark.slow)])
def test_the_launcher_trains_on_both_layouts(folders, tmp_path, name):
  config = tmp_path / "imagenet_tiny.py"
  config.write_text(KILLABLE.format(folder=folders[name], epochs=2).replace(
      '"imagenet2012"', repr(name)).replace("return c", f"c.data.num_classes = "
                                             f"{CLASSES if name == 'array_record' else 0}\n"
                                             "  return c"))
  done = subprocess.run([sys.executable, "-m", "sgdlab.launch", f"--config={config}",
                         f"--workdir={tmp_path / 'runs'}"], env=conftest.subprocess_env(1),
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  (epochs,) = glob.glob(str(tmp_path / "runs" / "*" / "epochs.csv"))
  assert len(open(epochs).read().strip().splitlines()) == 3  # header and two epochs


KILLABLE = '''
from sgdlab.config import default_config

def get_config():
  c = default_config()
  c.data.name, c.data.dir, c.data.pipeline = "imagenet2012", {folder!r}, "grain"
  c.data.image_size, c.data.eval_resize = 32, 36
  c.model.hidden = (32,)
  c.batch_size, c.num_epochs, c.learning_rate = 8, {epochs}, 0.05
  c.checkpoint_every_epochs = 1
  return c
'''


def test_kill_9_then_rerun_reads_the_same_batches_bitwise(folders, tmp_path, mesh1):
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "train"))
  from test_resume import (  # pylint: disable=g-import-not-at-top
      _assert_point_equals, _reference, _rows, _run_killed)
  text = KILLABLE.format(folder=folders["imagenet2012"], epochs=12)
  workdir = tmp_path / "killed"
  point, log = _run_killed(tmp_path, workdir, lambda: len(_rows(workdir)) >= 2, text=text)
  assert "resumed from the checkpoint at epoch" in log
  _assert_point_equals(point, _reference(tmp_path, mesh1, text))


def _shard(folder, split="train", i=0):
  return sorted(glob.glob(os.path.join(folder, "imagenet2012", "5.1.0",
                                       f"imagenet2012-{split}.*")))[i]


def _rewrite_first_record(folder, record):
  path = _shard(folder)
  reader = records_reader(path)
  rows = [record] + list(reader.read(list(range(1, reader.num_records()))))
  reader.close()
  os.unlink(path)
  support._write_shards([path], rows)


def records_reader(path):
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  return array_record_module.ArrayRecordReader(path)


DEFECTS = {  # name -> (change to the copied TFDS folder, field, words of the message)
    "no folder": (lambda d: shutil.rmtree(d), "data.dir", "existing folder"),
    "no split": (lambda d: _drop_split(d, "validation"), "data.dir", "'validation' split"),
    "missing shard": (lambda d: os.unlink(_shard(d, i=1)), "data.dir", "is missing"),
    "truncated shard": (lambda d: _truncate(_shard(d)), "data.dir", "truncated"),
    "miscounted shard": (lambda d: _recount(d), "data.dir", "records, not"),
    "not a JPEG": (lambda d: _rewrite_first_record(d, support.serialize(b"GIF89a", 1)),
                   "data.dir", "is a JPEG"),
    "label outside the classes": (lambda d: _rewrite_first_record(
        d, support.serialize(support.jpegs(1)[0], CLASSES)), "data.dir", "labels in [0, 10)"),
}


def _drop_split(folder, split):
  for path in glob.glob(os.path.join(folder, "imagenet2012", "5.1.0", f"*-{split}.*")):
    os.unlink(path)
  info_path = os.path.join(folder, "imagenet2012", "5.1.0", "dataset_info.json")
  info = json.load(open(info_path))
  info["splits"] = [x for x in info["splits"] if x["name"] != split]
  json.dump(info, open(info_path, "w"))


def _truncate(path):
  data_bytes = open(path, "rb").read()
  open(path, "wb").write(data_bytes[:len(data_bytes) // 2])


def _recount(folder):
  info_path = os.path.join(folder, "imagenet2012", "5.1.0", "dataset_info.json")
  info = json.load(open(info_path))
  info["splits"][0]["shardLengths"][0] = "99"
  json.dump(info, open(info_path, "w"))


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_a_bad_dataset_is_one_config_error_naming_data_dir(folders, tmp_path, defect):
  folder = str(tmp_path / "tfds")
  shutil.copytree(folders["imagenet2012"], folder)
  change, field, words = DEFECTS[defect]
  change(folder)
  with pytest.raises(ConfigError, match=field) as e:
    data.describe(imagenet_config(folder).data)
  assert words in str(e.value)


def test_a_bad_record_past_the_checked_ones_is_named_when_read(folders, tmp_path, mesh1):
  folder = str(tmp_path / "tfds")
  shutil.copytree(folders["imagenet2012"], folder)
  path = _shard(folder)
  reader = records_reader(path)
  rows = list(reader.read(list(range(reader.num_records()))))
  reader.close()
  rows[1] = support.serialize(b"\xff\xd8 cut short", 1)  # a JPEG's marker, then nothing
  os.unlink(path)
  support._write_shards([path], rows)
  data.describe(imagenet_config(folder).data)  # first and last records are whole
  with pytest.raises(ConfigError, match="train record 1"):
    trainer.train(imagenet_config(folder), mesh=mesh1)


@pytest.mark.parametrize("overrides,field", [
    ({"data.eval_resize": 30}, "data.eval_resize"),  # smaller than the 32 crop
    ({"data.pipeline": "device"}, "data.pipeline"),
    ({"data.num_classes": 5}, "data.num_classes"),  # features.json says 10
    ({"data.augment": "crop_flip"}, "data.augment"),
    ({"data.validation_fraction": 0.1}, "data.validation_fraction")])
def test_bad_fields_name_the_field(folders, overrides, field):
  with pytest.raises(ConfigError, match=field):
    data.describe(imagenet_config(folders["imagenet2012"], **overrides).data)


def test_plain_records_need_a_class_count_and_others_refuse_one(folders):
  with pytest.raises(ConfigError, match="data.num_classes"):
    data.describe(imagenet_config(folders["array_record"], "array_record",
                                  **{"data.num_classes": 0}).data)
  with pytest.raises(ConfigError, match="data.num_classes"):
    data.describe(conftest.tiny_config(**{"data.num_classes": 10}).data)


def test_the_launcher_refuses_a_missing_shard_with_exit_2_and_writes_nothing(folders,
                                                                            tmp_path):
  folder = str(tmp_path / "tfds")
  shutil.copytree(folders["imagenet2012"], folder)
  os.unlink(_shard(folder, "validation", 2))
  config = tmp_path / "bad.py"
  config.write_text(KILLABLE.format(folder=folder, epochs=2))
  workdir = tmp_path / "runs"
  done = subprocess.run([sys.executable, "-m", "sgdlab.launch", f"--config={config}",
                         f"--workdir={workdir}"], env=conftest.subprocess_env(1),
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 2
  assert "config.data.dir=" in done.stderr and "is missing" in done.stderr
  assert len(done.stderr.strip().splitlines()) == 1
  assert not workdir.exists() or not os.listdir(workdir)
