r"""What the online noise-scale estimate costs: examples/s with noise_scale on and off.

  python experiments/benchmark_noise_overhead.py [--batch_sizes 32,256,2048] [--repeats 5]
      [--noise_groups 16]

MLP 784-512-512-10 (no dropout), SGD, the 4,000 bundled MNIST training digits, one
device by default (--devices=N uses N devices; for fake CPU devices set
XLA_FLAGS=--xla_force_host_platform_device_count=N first). Each configuration is
sgdlab's own Run (`sgdlab.train.run.create_run`: epoch plan and advance) plus the host
sync the trainer does per epoch; evaluation is left out. With noise_scale=True, one
device computes the gradient of each half of the batch separately (one after the
other; --noise_groups=G: of G parts) and the step returns two more squared norms; on
n devices it returns each device's local norm. The host side (per-step estimates and
the EMA) is timed too.

Compilation and a warm-up epoch are not timed. On and off alternate, order swapped
every repeat, so load from other processes falls on both. The table gives median
examples/s over all timed epochs with the (min-max) spread, and the median (range)
of the per-repeat ratios on / off. The parameters after the warm-up epoch are
compared too: the estimate must not change training.
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np
from absl import app, flags, logging

from sgdlab import config as config_lib
from sgdlab import data, noise
from sgdlab.train import run as run_lib
from sgdlab.train import step

_EPOCHS = flags.DEFINE_integer("epochs", 3, "Timed epochs per configuration per repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Rounds over on/off, order swapped each.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["32", "256", "2048"], "Batch sizes k.")
_DEVICES = flags.DEFINE_integer("devices", 1, "Devices in the mesh.")
_LR = flags.DEFINE_float("learning_rate", 0.1, "Constant SGD learning rate.")
_GROUPS = flags.DEFINE_integer("noise_groups", 0, "config.noise_groups of the 'on' runs.")


def make_loop(dataset: data.Dataset, k: int, mesh, noise_scale: bool, lr: float):
  """A warmed-up `run_epoch(e) -> seconds` and a `params()` getter for one setting."""
  c = config_lib.default_config()
  c.model.hidden, c.model.dropout = (512, 512), 0.0
  c.schedule.name, c.lr_decay = "constant", 0.0
  c.batch_size, c.learning_rate, c.noise_scale = k, lr, noise_scale
  c.noise_groups = _GROUPS.value
  run = run_lib.create_run(config_lib.resolve(c, n_devices=mesh.size, spec=dataset.spec()),
                           dataset, mesh)
  box = dict(state=run.init_state())
  ema = noise.NoiseEMA(c.noise_ema)

  def run_epoch(e: int) -> float:
    start = time.perf_counter()
    box["state"], metrics = run.advance(box["state"], run.order(e))
    metrics = jax.device_get(metrics)  # the trainer's one sync per epoch
    if int(box["state"].diverged_at) >= 0:
      raise FloatingPointError(f"diverged at k={k}; lower --learning_rate")
    if noise_scale:  # the trainer's host work for the estimate
      g, t = noise.online_estimates(metrics["g_small_sq"], metrics["g_big_sq"],
                                    metrics["b_small"], metrics["b_big"])
      full = metrics["full"] > 0
      ema.update(np.where(full, g, np.nan), np.where(full, t, np.nan))
    return time.perf_counter() - start

  return run_epoch, lambda: jax.device_get(box["state"].params)


def main(argv: list[str]) -> None:
  del argv
  dataset = data.load(config_lib.default_config().data)
  mesh = step.make_mesh(jax.devices()[:_DEVICES.value])
  print(f"MLP 784-512-512-10, {dataset.n_train} MNIST examples per epoch, {mesh.size} "
        f"{jax.devices()[0].platform} device(s); {_REPEATS.value} repeats x {_EPOCHS.value} "
        f"epochs per setting. ex/s: median (min-max) over epochs; ratio on/off: median "
        f"(range) over repeats.")
  print(f"noise_groups={_GROUPS.value} (0: two halves on one device)")
  print("| k | noise_scale off ex/s | noise_scale on ex/s | on / off | max param diff |")
  print("|---:|---:|---:|---:|---:|")
  for k in (int(v) for v in _BATCH_SIZES.value):
    loops = {flag: make_loop(dataset, k, mesh, flag, _LR.value) for flag in (False, True)}
    for run_epoch, _ in loops.values():
      run_epoch(0)  # warm-up
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(
        jax.tree.leaves(loops[False][1]()), jax.tree.leaves(loops[True][1]())))
    times = {False: [], True: []}
    per_repeat = {False: [], True: []}
    epoch = 1
    for r in range(_REPEATS.value):
      for flag in ((False, True) if r % 2 == 0 else (True, False)):
        t = [loops[flag][0](epoch + i) for i in range(_EPOCHS.value)]
        times[flag] += t
        per_repeat[flag].append(statistics.median(t))
      epoch += _EPOCHS.value
    n = dataset.n_train
    rate = lambda t: (f"{n / statistics.median(t):,.0f} "
                      f"({n / max(t):,.0f}-{n / min(t):,.0f})")
    ratios = [off / on for on, off in zip(per_repeat[True], per_repeat[False])]
    print(f"| {k} | {rate(times[False])} | {rate(times[True])} | "
          f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | "
          f"{diff:.1e} |", flush=True)
    logging.info("k=%d done", k)


if __name__ == "__main__":
  app.run(main)
