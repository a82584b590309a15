"""What the online noise-scale estimate costs: examples/s with noise_scale on and off.

The MLP 784-512-512-10 (no dropout), constant-lr SGD, the bundled MNIST digits; each
setting is sgdlab's Run over whole epochs with the loop's host work for the estimate
(`bench.NoiseHost`: the loop's per-step estimates and EMA), evaluation left out. With
noise_scale=True, one device computes the gradient of each part of the batch
separately (noise_groups parts; 0: two halves) and the step returns two more squared
norms; on n devices it returns each device's local norm. On and off alternate, order
swapped every repeat. The parameters after the warm-up epoch are compared too: the
estimate must not change training.
"""

from __future__ import annotations

import statistics

import jax
import ml_collections

from sgdlab import config as config_lib
from sgdlab import data
from sgdlab.studies import bench
from sgdlab.train import step


def setting(dataset: data.Dataset, k: int, mesh, noise_scale: bool, lr: float,
            groups: int) -> bench.RunEpochs:
  """One setting's Run, with the loop's noise bookkeeping timed when the estimate is on."""
  c = config_lib.default_config()
  c.model.hidden, c.model.dropout = (512, 512), 0.0
  c.schedule.name, c.lr_decay = "constant", 0.0
  c.batch_size, c.learning_rate, c.noise_scale = k, lr, noise_scale
  c.noise_groups = groups
  run = bench.create(c, dataset, mesh)
  return bench.RunEpochs(run, host=bench.NoiseHost(run) if noise_scale else None)


def measure(config: ml_collections.ConfigDict) -> list[str]:
  """The benchmark a config describes (experiments/benchmark_noise_overhead.py), printed."""
  c = config
  dataset = bench.load_mnist()
  mesh = step.make_mesh(jax.devices()[:c.devices])
  print(f"MLP 784-512-512-10, {dataset.n_train} MNIST examples per epoch, {mesh.size} "
        f"{jax.devices()[0].platform} device(s); {c.repeats} repeats x {c.epochs} "
        f"epochs per setting. ex/s: median (min-max) over epochs; ratio on/off: median "
        f"(range) over repeats.")
  print(f"noise_groups={c.noise_groups} (0: two halves on one device)")
  print("| k | noise_scale off ex/s | noise_scale on ex/s | on / off | max param diff |")
  print("|---:|---:|---:|---:|---:|")
  rows, n = [], dataset.n_train
  for k in c.batch_sizes:
    loops = {flag: setting(dataset, k, mesh, flag == "on", c.learning_rate, c.noise_groups)
             for flag in ("off", "on")}
    for loop in loops.values():
      loop.run_epoch(0)  # warm-up
    diff = bench.max_param_diff(loops["off"].params(), loops["on"].params())
    t = bench.alternate(loops, c.repeats, epochs=c.epochs, order="swap")
    per_repeat = {f: [statistics.median(t.wall[f][i:i + c.epochs])
                      for i in range(0, len(t.wall[f]), c.epochs)] for f in loops}
    ratios = [off / on for on, off in zip(per_repeat["on"], per_repeat["off"])]
    rate = lambda f: "{:,.0f} ({:,.0f}-{:,.0f})".format(*t.rate(f, n))
    rows.append(f"| {k} | {rate('off')} | {rate('on')} | {statistics.median(ratios):.2f}x "
                f"({min(ratios):.2f}-{max(ratios):.2f}) | {diff:.1e} |")
    print(rows[-1], flush=True)
  return rows
