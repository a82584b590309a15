"""What a Hessian-vector product costs against one gradient, per model.

The loss is the training loss on one batch (`step.training_loss`, as sharpness uses it),
jitted three ways on the same parameters and batch: the gradient, a Hessian-vector
product (`sgdlab.curvature.hvp`, forward over reverse) and, for the sharpness measured
in training, one Lanczos run of `iterations` products. Each is timed in turn, order
rotated every round; the cost of an HVP is the median over rounds of its time over the
gradient's in the same round. Forward-over-reverse costs about 2-3 gradients in theory
(Pearlmutter 1994; Griewank & Walther's cheap-gradient bound for the JVP of a gradient).
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sgdlab import config as config_lib
from sgdlab import curvature, models
from sgdlab.studies import bench
from sgdlab.train import step


def model_loss(name: str, k: int, seed: int = 0, curvature_form: bool = True
               ) -> tuple[Callable[[Any], jax.Array], Any]:
  """(loss_fn, params) for sgdlab's `name` model (mlp: 784-512-512-10; cnn: Keras'
  mnist_cnn) on one batch of k synthetic MNIST-shaped images: the training loss the
  sharpness in training differentiates (`step.training_loss`), with the model in the
  form it differentiates (`models.for_curvature`), or as training has it."""
  c = config_lib.default_config().model
  c.name, c.hidden = name, (512, 512)
  model = models.build(c, 10)
  model = models.for_curvature(model) if curvature_form else model
  data = bench.synthetic(k, seed=seed)
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  params = model.init(jax.random.key(seed), x[:1])["params"]
  batches = dict(x=x[None], y=y[None], mask=jnp.ones((1, k), jnp.float32))
  return functools.partial(step.training_loss, model, batches=batches), params


def _timed(fn: Callable[[], Any]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def measure_model(name: str, k: int, rounds: int, iterations: int) -> dict[str, Any]:
  """Median seconds of the training gradient, the HVP and a Lanczos run; HVP / gradient
  per round."""
  loss_fn, params = model_loss(name, k)
  training_loss = model_loss(name, k, curvature_form=False)[0]
  v = jax.tree.map(jnp.ones_like, params)
  key = jax.random.key(0)
  fns = {"gradient": jax.jit(jax.grad(training_loss)),
         "hvp": jax.jit(lambda p, u: curvature.hvp(loss_fn, p, u)),
         "lanczos": jax.jit(lambda p: curvature.lanczos(loss_fn, p, iterations, key))}
  calls = {"gradient": lambda: fns["gradient"](params), "hvp": lambda: fns["hvp"](params, v),
           "lanczos": lambda: fns["lanczos"](params)}
  for call in calls.values():
    jax.block_until_ready(call())  # compile, untimed
  wall: dict[str, list[float]] = {n: [] for n in calls}
  for r in range(rounds):
    for n in bench.turn_order(list(calls), r, "rotate"):
      wall[n].append(_timed(calls[n]))
  ratios = [h / g for h, g in zip(wall["hvp"], wall["gradient"])]
  return dict(model=name, k=k, params=sum(p.size for p in jax.tree.leaves(params)),
              seconds={n: statistics.median(t) for n, t in wall.items()},
              ratio=tuple(float(q) for q in np.percentile(ratios, [50, 25, 75])))


def measure(config: ml_collections.ConfigDict) -> list[str]:
  """The benchmark a config describes (experiments/benchmark_hvp.py), printed."""
  c = config
  print(f"one batch of k={c.k}, one {jax.devices()[0].platform} device "
        f"({bench.machine_description()}); {c.rounds} rounds, order rotated; HVP / "
        f"gradient: median [IQR] over rounds; Lanczos: {c.iterations} iterations.")
  print("| model | parameters | gradient ms | HVP ms | HVP / gradient | Lanczos s |")
  print("|---|---:|---:|---:|---:|---:|")
  rows = []
  for name in c.models:
    m = measure_model(name, c.k, c.rounds, c.iterations)
    s, (med, q1, q3) = m["seconds"], m["ratio"]
    rows.append(f"| {name} | {m['params']:,} | {s['gradient'] * 1e3:.1f} | "
                f"{s['hvp'] * 1e3:.1f} | {med:.2f}x [{q1:.2f}-{q3:.2f}] | {s['lanczos']:.2f} |")
    print(rows[-1], flush=True)
  return rows
