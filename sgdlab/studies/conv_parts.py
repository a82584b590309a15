"""A convolution's three parts: XLA's forms against sgdlab's (`sgdlab.models.conv`).

The Keras MNIST CNN's second convolution (k x 26x26x32 -> 64 channels, 3x3, VALID),
timed as a top-level jitted program and as the body of a `lax.scan` over distinct
batches (the form sgdlab's epoch compiles: no loop-invariant work to hoist), for the
forward pass, the input gradient and the kernel gradient, each in XLA's form and in
sgdlab's (input gradient as a forward convolution over batch chunks, kernel gradient
as chunked im2col matmuls), against the machine's matmul rate (a 2048^2 fp32 matmul).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from sgdlab.models import conv

H, C, F, WINDOW = 26, 32, 64, (3, 3)
PADS = ((0, 0), (0, 0))


def _time(fn: Callable, *args) -> float:
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def parts(kernel: jax.Array) -> dict[str, dict[str, Callable]]:
  """part -> form -> f(x, dy) for one convolution with this kernel."""
  xla = lambda x: conv.conv2d(x, kernel, impl="xla")
  return {
      "forward": {"xla": lambda x, dy: xla(x)},
      "input grad": {"xla": lambda x, dy: jax.vjp(xla, x)[1](dy)[0],
                     "sgdlab": lambda x, dy: conv.chunked_input_grad(
                         dy, kernel, x.shape[1:3], (1, 1), PADS)},
      "kernel grad": {
          "xla": lambda x, dy: jax.vjp(lambda w: conv.conv2d(x, w, impl="xla"), kernel)[1](
              dy)[0],
          "sgdlab": lambda x, dy: conv.im2col_kernel_grad(x, dy, WINDOW, (1, 1), PADS)},
  }


def scanned(f: Callable, b: int) -> Callable:
  """f over the scan_length batches stacked in xs, dys: each iteration's inputs differ."""
  def run(xs, dys):
    def body(acc, i):
      x = lax.dynamic_slice_in_dim(xs, i * b, b)
      dy = lax.dynamic_slice_in_dim(dys, i * b, b)
      return acc + jnp.sum(f(x, dy)), None
    return lax.scan(body, 0.0, jnp.arange(xs.shape[0] // b))[0]
  return jax.jit(run)


def measure(config: ml_collections.ConfigDict) -> dict[tuple[str, str, str], float]:
  """The table a config describes (experiments/benchmark_conv.py), printed; ms per cell."""
  b, n, rounds = config.batch, config.scan_length, config.rounds
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  xs = jax.random.normal(keys[0], (n * b, H, H, C))
  dys = jax.random.normal(keys[1], (n * b, H - 2, H - 2, F))
  kernel = jax.random.normal(keys[2], (*WINDOW, C, F)) * 0.1
  flops = 2 * b * (H - 2) ** 2 * WINDOW[0] * WINDOW[1] * C * F
  a = jax.random.normal(keys[0], (2048, 2048))
  matmul = jax.jit(lambda a: a @ a)
  cells = {}
  fns = {}
  for part, forms in parts(kernel).items():
    for form, f in forms.items():
      fns[(part, form, "top-level")] = (jax.jit(lambda xs, dys, f=f: f(xs[:b], dys[:b])), 1)
      fns[(part, form, "in a scan")] = (scanned(f, b), n)
  times = {key: [] for key in fns}
  mm = []
  for _ in range(rounds):
    mm.append(_time(matmul, a))
    for key, (fn, iters) in fns.items():
      times[key].append(_time(fn, xs, dys) / iters)
  rate = 2 * 2048 ** 3 / statistics.median(mm) / 1e9
  print(f"{b} x {H}x{H}x{C} -> {F}, 3x3 VALID ({flops / 1e9:.2f} GFLOP per part), "
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}; matmul 2048^2: "
        f"{rate:.0f} GFLOP/s; medians of {rounds} calls.")
  print("| part | form | where | ms | GFLOP/s | / matmul |")
  print("|---|---|---|---|---|---|")
  for (part, form, where), t in times.items():
    ms = statistics.median(t) * 1e3
    gf = flops / ms / 1e6
    cells[(part, form, where)] = ms
    print(f"| {part} | {form} | {where} | {ms:,.1f} | {gf:.0f} | {gf / rate:.2f} |")
  for where in ("top-level", "in a scan"):
    gain = cells[("kernel grad", "xla", where)] / cells[("kernel grad", "sgdlab", where)]
    print(f"kernel gradient {where}: sgdlab's {gain:.1f}x faster than XLA's")
  return cells
