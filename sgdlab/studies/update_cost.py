"""What an optimizer costs per update against momentum: whole train steps, and the update alone.

The MLP 784-512-512-10 (no dropout) at one k, constant lr, on synthetic MNIST-shaped
images (only the shapes matter for time). Two figures per optimizer:
- the train step, as the loop runs it: whole epochs of sgdlab's Run (forward, backward,
  optimizer update, metrics; `sgdlab.studies.bench`), the optimizers timed in turn,
  order rotated each round; the cost is the median over rounds of its epoch time over
  momentum's in the same round;
- the update alone: `optimizer(cfg).update` and `optax.apply_updates` under jit on the
  model's parameters and a fixed gradient tree, so the optimizer's own work (LARS's and
  LAMB's per-layer norms, Adam's second moment) is seen without the gradient around it.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sgdlab import config as config_lib
from sgdlab import optim
from sgdlab.studies import bench
from sgdlab.train import step

BASE = "momentum"
# A learning rate each trains at without diverging on random labels for a few epochs.
_LR = dict(momentum=0.01, nesterov=0.01, adam=1e-4, adamw=1e-4, lars=0.1, lamb=1e-4)


def run_config(name: str, k: int, weight_decay: float) -> ml_collections.ConfigDict:
  """One optimizer's run: the MLP, constant lr, momentum (or b1) 0.9, and for AdamW,
  LARS and LAMB the weight decay (1-D parameters excluded, as their papers do)."""
  c = config_lib.default_config()
  c.model.name, c.model.hidden, c.model.dropout = "mlp", (512, 512), 0.0
  c.schedule.name, c.lr_decay = "constant", 0.0
  c.batch_size, c.learning_rate = k, _LR[name]
  c.optimizer.name = name
  if "momentum" in optim.FIELDS[name]:
    c.optimizer.momentum = 0.9
  if name in ("adamw", "lars", "lamb"):
    c.optimizer.weight_decay = weight_decay
  return c


def update_seconds(cfg: ml_collections.ConfigDict, params, repeats: int) -> float:
  """Median seconds of one jitted optimizer update and its application to `params`."""
  tx = optim.optimizer(cfg)
  grads = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), params)

  @jax.jit
  def update(params, opt_state):
    updates, opt_state = tx.update(grads, opt_state, params, lr=jnp.float32(0.01))
    return optax.apply_updates(params, updates), opt_state

  state = (params, tx.init(params))
  state = jax.block_until_ready(update(*state))  # compile, untimed
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    state = jax.block_until_ready(update(*state))
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds)


def measure(config: ml_collections.ConfigDict) -> list[str]:
  """The benchmark a config describes (experiments/benchmark_optimizers.py), printed."""
  c = config
  mesh = step.make_mesh(jax.devices()[:1])
  dataset = bench.synthetic(c.k * c.steps_per_epoch)
  loops = {name: bench.RunEpochs(bench.create(run_config(name, c.k, c.weight_decay),
                                              dataset, mesh))
           for name in c.optimizers}
  for loop in loops.values():
    loop.run_epoch(0)  # warm-up, untimed
  t = bench.alternate(loops, c.rounds, order="rotate")
  params = loops[BASE].params()
  alone = {name: update_seconds(loops[name].run.members[0].config.optimizer, params,
                                c.update_repeats) for name in loops}
  print(f"MLP 784-512-512-10 at k={c.k}, {c.steps_per_epoch} steps an epoch, one "
        f"{jax.devices()[0].platform} device ({bench.machine_description()}); "
        f"{c.rounds} rounds, order rotated. Step cost over {BASE}: median [IQR] over "
        f"rounds; update alone: median of {c.update_repeats} jitted updates.")
  print(f"| optimizer | step ms | step / {BASE} | update alone ms | update / {BASE} |")
  print("|---|---:|---:|---:|---:|")
  rows = []
  for name in loops:
    per_step = [s / c.steps_per_epoch * 1e3 for s in t.wall[name]]
    ratios = [a / b for a, b in zip(t.wall[name], t.wall[BASE])]
    q1, med, q3 = np.percentile(ratios, [25, 50, 75])
    rows.append(f"| {name} | {statistics.median(per_step):.1f} | {med:.3f}x "
                f"[{q1:.3f}-{q3:.3f}] | {alone[name] * 1e3:.3f} | "
                f"{alone[name] / alone[BASE]:.2f}x |")
    print(rows[-1], flush=True)
  return rows
