"""One run across two processes on 127.0.0.1 gives the metrics of one process."""

import glob
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import subprocess_env
from sgdlab.results import files
from sgdlab import trainer
from sgdlab.train import step

CONFIG = textwrap.dedent('''
    from sgdlab.config import default_config

    def get_config():
      c = default_config()
      c.data.name = "synthetic"
      c.data.synthetic_n_train = 200
      c.data.synthetic_n_test = 64
      c.data.synthetic_input_shape = (6, 6, 1)
      c.model.hidden = (16,)
      c.batch_size = 32
      c.num_epochs = 3
      c.learning_rate = 0.5
      c.checkpoint_every_epochs = 1
      return c
''')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _imagenet_lines(tmp_path) -> str:
  """A TFDS-layout ImageNet of 64 generated JPEGs, cropped to 12x12 (tests/data)."""
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))
  import imagenet_support  # pylint: disable=g-import-not-at-top
  root = imagenet_support.write_tfds(tmp_path / "tfds", {
      "train": imagenet_support.examples(64, 10, 0),
      "validation": imagenet_support.examples(16, 10, 1)})
  return (f"c.data.name, c.data.dir = 'imagenet2012', {root!r}\n"
          "  c.data.image_size, c.data.eval_resize = 12, 14\n  ")


# "imagenet" reads through grain, its device pipeline the step's: the others with -m slow.
@pytest.mark.parametrize("pipeline", [pytest.param("device", marks=pytest.mark.slow),
                                      pytest.param("grain", marks=pytest.mark.slow),
                                      "imagenet"])
def test_two_processes_give_the_metrics_of_one(tmp_path, pipeline):
  """With grain, each process reads only the half of every batch its device holds;
  ImageNet's records are decoded and cropped by the process that holds them."""
  extra = _imagenet_lines(tmp_path) if pipeline == "imagenet" else ""
  pipeline = "grain" if pipeline == "imagenet" else pipeline
  text = CONFIG.replace("return c", f"{extra}c.data.pipeline = {pipeline!r}\n"
                        f"  c.data.cache_dir = {str(tmp_path / 'cache')!r}\n  return c")
  config = tmp_path / "multihost.py"
  config.write_text(text)
  workdir = tmp_path / "runs"
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "sgdlab.launch", f"--config={config}", f"--workdir={workdir}",
       "--multihost", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={i}"], env=subprocess_env(1), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
  for i, (_, err) in enumerate(outs):
    assert f"multi-process run: process {i} of 2, 1 local of 2 devices" in err
    assert "epoch 3/3" in err  # both processes train
    if pipeline == "grain":
      assert f"grain: process {i} reads columns [{16 * i}, {16 * (i + 1)}) of every batch " \
             "of 32" in err
  assert "summary:" in outs[0][1] and "summary:" not in outs[1][1]  # one writer

  # The same config in one process, on a mesh of two devices.
  namespace = {}
  exec(text, namespace)  # noqa: S102 - the test's own config text
  one = trainer.train(namespace["get_config"](), mesh=step.make_mesh(jax.devices()[:2]))
  (point,) = [os.path.dirname(p) for p in glob.glob(str(workdir / "*" / "config.json"))]
  two = files.load_history(point)
  assert files.status(point)["status"] == "done"
  np.testing.assert_allclose(two.steps["loss"], one.steps["loss"], rtol=1e-5)
  for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
    np.testing.assert_allclose(two.epochs[key], one.epochs[key], rtol=1e-5, atol=1e-6)
  params = files.load_params(point)
  for path, leaf in jax.tree_util.tree_flatten_with_path(one.state.params)[0]:
    key = "/".join(str(k.key) for k in path)
    np.testing.assert_allclose(params[key], np.asarray(leaf), rtol=1e-4, atol=1e-6)
