r"""The two input pipelines side by side: examples/s with resident arrays and with grain.

  python experiments/benchmark_pipeline.py [--models mlp,cnn] [--batch_size 256] \
      [--epochs 3] [--repeats 3]

The 4,000 bundled MNIST training digits, written once as plain IDX files (uint8) to a
temporary folder, so that "grain" really reads from disk: memory-mapped pages, scaled
to [0, 1] per batch. Per model (MLP 784-512-512-10; the Keras MNIST CNN, dropout off)
and k (256 by default), the trainer's own Run (`sgdlab.train.run.create_run`) is driven
as the loop drives it: each epoch's calls of `steps_per_call` steps, then one host sync.
  device        the dataset resident on the device, one call per epoch (the default)
  grain, 1      streamed, one step per call (the grain default): a batch is read while
                the step before it runs
  grain, epoch  streamed, one call per epoch: the epoch's batches read, then one scan
Compilation and a warm-up epoch are not timed; evaluation is left out. Settings
alternate within each repeat, so load from other processes falls on all of them. The
table gives median examples/s over all timed epochs with the (min-max) spread; the
final parameters of every setting are compared with the device pipeline's (they are
the same batches, so they must be equal).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from sgdlab import config as config_lib
from sgdlab import data
from sgdlab.data import idx
from sgdlab.train import run as run_lib
from sgdlab.train import step

_MODELS = flags.DEFINE_list("models", ["mlp", "cnn"], "Models: mlp, cnn.")
_K = flags.DEFINE_integer("batch_size", 256, "Batch size k.")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Timed epochs per setting per repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Rounds over the settings.")
_N_TRAIN = flags.DEFINE_integer("n_train", 0, "Training examples (0 = all 4,000).")

SETTINGS = (("device", "device", 0), ("grain, 1", "grain", 1), ("grain, epoch", "grain", -1))


def write_idx_folder(folder: str) -> str:
  """The bundled digits as plain IDX files (uint8), as a user's data.dir would hold them."""
  dataset = data.load(config_lib.default_config().data).unit()
  for prefix, x, y in (("train", dataset.x_train, dataset.y_train),
                       ("t10k", dataset.x_test, dataset.y_test)):
    pixels = np.rint(np.asarray(x)[..., 0] * 255).astype(np.uint8)
    idx.write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), pixels)
    idx.write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), y.astype(np.uint8))
  return folder


def make_loop(folder: str, model: str, pipeline: str, steps_per_call: int, mesh):
  """A warmed-up `run_epoch(e) -> seconds`, a params getter, and examples per epoch."""
  c = config_lib.default_config()
  c.data.dir, c.data.pipeline, c.data.n_train = folder, pipeline, _N_TRAIN.value
  c.model.name, c.model.dropout = model, 0.0
  if model == "mlp":
    c.model.hidden = (512, 512)
  c.schedule.name, c.lr_decay = "constant", 0.0
  c.batch_size, c.learning_rate = _K.value, 0.05
  resolved = config_lib.resolve(c, n_devices=mesh.size)
  spe = resolved.steps_per_epoch
  c.steps_per_call = spe if steps_per_call < 0 else steps_per_call
  resolved = config_lib.resolve(c, n_devices=mesh.size)
  run = run_lib.create_run(resolved, mesh=mesh)
  per_call = run.program.steps_per_call
  box = dict(state=run.init_state())

  def run_epoch(e: int) -> float:
    start = time.perf_counter()
    parts = []
    for pos in range(0, spe, per_call):
      box["state"], metrics = run.advance(box["state"], run.feed(e, pos, min(per_call,
                                                                           spe - pos)))
      parts.append(metrics)
    jax.device_get(parts)  # the trainer's one sync per epoch
    return time.perf_counter() - start

  run_epoch(0)  # warm-up: compiles the call lengths, fills the page cache
  return run_epoch, lambda: jax.device_get(box["state"].params), resolved.spec.n_train


def main(argv: list[str]) -> None:
  del argv
  mesh = step.make_mesh(jax.devices()[:1])
  with tempfile.TemporaryDirectory() as folder:
    write_idx_folder(folder)
    print(f"k={_K.value}, one {jax.devices()[0].platform} device, bundled MNIST as plain "
          f"IDX files; {_REPEATS.value} repeats x {_EPOCHS.value} epochs per setting; "
          "ex/s: median (min-max) over epochs.")
    print("| model | " + " | ".join(f"{name} ex/s" for name, _, _ in SETTINGS)
          + " | same parameters |")
    print("|---|" + "---:|" * len(SETTINGS) + "---|")
    for model in _MODELS.value:
      loops = {name: make_loop(folder, model, p, s, mesh) for name, p, s in SETTINGS}
      times = {name: [] for name in loops}
      epoch = 1
      for r in range(_REPEATS.value):
        order = list(loops) if r % 2 == 0 else list(reversed(loops))
        for name in order:
          times[name] += [loops[name][0](epoch + i) for i in range(_EPOCHS.value)]
        epoch += _EPOCHS.value  # every setting trains the same epochs: same batches
      n = loops["device"][2]
      rate = lambda t: f"{n / statistics.median(t):,.0f} ({n / max(t):,.0f}-{n / min(t):,.0f})"
      reference = jax.tree.leaves(loops["device"][1]())
      same = all(all(np.array_equal(a, b) for a, b in zip(reference, jax.tree.leaves(l[1]())))
                 for l in loops.values())
      print(f"| {model} | " + " | ".join(rate(times[name]) for name in loops)
            + f" | {'yes' if same else 'NO'} |", flush=True)


if __name__ == "__main__":
  app.run(main)
