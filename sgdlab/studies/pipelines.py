"""The two input pipelines side by side: examples/s with resident arrays and with grain.

The bundled MNIST digits written once as plain IDX files (uint8) to a folder, so that
"grain" really reads from disk (memory-mapped pages, scaled to [0, 1] per batch). Per
model, the trainer's own Run over whole epochs (`bench.RunEpochs`: each epoch's calls
of steps_per_call steps, then one host sync), in three settings:
  device        the dataset resident on the device, one call per epoch (the default)
  grain, 1      streamed, one step per call (the grain default): a batch is read while
                the step before it runs
  grain, epoch  streamed, one call per epoch: the epoch's batches read, then one scan
The final parameters of every setting are compared with the device pipeline's: they
are the same batches, so they must be equal.
"""

from __future__ import annotations

import os
import tempfile

import jax
import ml_collections
import numpy as np

from sgdlab import config as config_lib
from sgdlab import data
from sgdlab.data import idx
from sgdlab.studies import bench
from sgdlab.train import step

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


def setting_config(folder: str, model: str, pipeline: str, steps_per_call: int, *, k: int,
                   n_train: int) -> ml_collections.ConfigDict:
  """A setting's config; steps_per_call -1 is one call per epoch."""
  c = config_lib.default_config()
  c.data.dir, c.data.pipeline, c.data.n_train = folder, pipeline, n_train
  c.model.name, c.model.dropout = model, 0.0
  if model == "mlp":
    c.model.hidden = (512, 512)
  c.schedule.name, c.lr_decay = "constant", 0.0
  c.batch_size, c.learning_rate = k, 0.05
  per_epoch = config_lib.resolve(c, n_devices=1).steps_per_epoch
  c.steps_per_call = per_epoch if steps_per_call < 0 else steps_per_call
  return c


def measure(config: ml_collections.ConfigDict) -> dict[str, dict[str, str]]:
  """The benchmark a config describes (experiments/benchmark_pipeline.py), printed: per
  model, each setting's ex/s and whether they trained the same parameters."""
  c = config
  mesh = step.make_mesh(jax.devices()[:1])
  out = {}
  with tempfile.TemporaryDirectory() as folder:
    write_idx_folder(folder)
    print(f"k={c.batch_size}, one {jax.devices()[0].platform} device, bundled MNIST as "
          f"plain IDX files; {c.repeats} repeats x {c.epochs} epochs per setting; ex/s: "
          "median (min-max) over epochs.")
    print("| model | " + " | ".join(f"{name} ex/s" for name, _, _ in SETTINGS)
          + " | same parameters |")
    print("|---|" + "---:|" * len(SETTINGS) + "---|")
    for model in c.models:
      loops = {}
      for name, pipeline, per_call in SETTINGS:
        cfg = setting_config(folder, model, pipeline, per_call, k=c.batch_size,
                             n_train=c.n_train)
        loops[name] = bench.RunEpochs(bench.create(cfg, None, mesh))
        loops[name].run_epoch(0)  # warm-up: compiles the call lengths, fills the page cache
      timings = bench.alternate(loops, c.repeats, epochs=c.epochs, order="swap")
      n = loops["device"].run.program.first.spec.n_train
      reference = jax.tree.leaves(loops["device"].params())
      same = all(all(np.array_equal(a, b) for a, b in zip(reference, jax.tree.leaves(l.params())))
                 for l in loops.values())
      rates = {name: "{:,.0f} ({:,.0f}-{:,.0f})".format(*timings.rate(name, n))
               for name in loops}
      out[model] = dict(rates, same="yes" if same else "NO")
      print(f"| {model} | " + " | ".join(rates.values()) + f" | {out[model]['same']} |",
            flush=True)
  return out
