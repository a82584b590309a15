"""Throughput of sgdlab's compiled training against hand-written JAX loops and PyTorch.

sgdlab's side is its Run, whole epochs as the loop drives it (`bench.RunEpochs`); the
others are `sgdlab.studies.baselines`. All start from sgdlab's initial parameters and
see the same batch order, so after the warm-up epoch they hold the same parameters:
`Result.parity` says how close, which shows the comparison is like for like. A round
times one epoch of each loop back to back, the JAX loops in rotating order, PyTorch
last and then a short untimed pause; a loop slower than `prune` x the best in the
first round is timed in that round only.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from sgdlab import data
from sgdlab.studies import baselines, bench
from sgdlab.studies.baselines import JAX_LOOP, JAX_STEP, TORCH
from sgdlab.studies.bench import SGDLAB
from sgdlab.train import step

SETTLE_S = 0.3  # pause after each PyTorch epoch (untimed)
HAND = (JAX_LOOP, JAX_STEP)


@dataclasses.dataclass
class Result:
  """Timings of every loop at one batch size k, aligned by round."""

  k: int
  timings: bench.Timings
  parity: dict[str, float]  # loop -> max |param| difference to sgdlab after warm-up
  final_loss: dict[str, float]
  n_train: int

  @property
  def epoch_times(self) -> dict[str, list[float]]:
    return self.timings.wall

  def examples_per_sec(self, name: str) -> tuple[float, float, float]:
    """(median, min, max) examples/s over all timed epochs."""
    return self.timings.rate(name, self.n_train)

  @property
  def best_hand(self) -> str:
    """The hand-written JAX pattern with the higher median throughput."""
    return max((n for n in HAND if n in self.epoch_times),
               key=lambda n: self.examples_per_sec(n)[0])

  def ratio(self, name: str, base: str | None = None,
            cpu: bool = False) -> tuple[float, float, float]:
    """(median, 25th, 75th percentile) of name's throughput over base's per round (base:
    the best hand-written pattern); cpu=True compares CPU time, steadier when shared."""
    return self.timings.ratio(name, base or self.best_hand, cpu=cpu)


class _Last:
  """A loop whose last epoch's loss is kept (the table's final losses)."""

  def __init__(self, loop: Any, out: dict[str, float], name: str):
    self.loop, self.out, self.name = loop, out, name

  def run_epoch(self, epoch: int) -> float:
    self.out[self.name] = loss = self.loop.run_epoch(epoch)
    return loss


def build_loops(dataset: data.Dataset, k: int, mesh: Mesh, *, model: str, lr: float,
                decay: float, seed: int, with_torch: bool, torch_threads: int,
                sizes: dict, scan_max_k: int = 0) -> dict[str, Any]:
  """sgdlab's Run and the hand-written loops at k, from sgdlab's initial parameters."""
  sg = bench.RunEpochs(bench.create(bench.bench_config(model, k, lr, decay, seed, **sizes),
                                    dataset, mesh))
  start = baselines.as_hand_params(baselines.sgdlab_params(sg.params(), model), model,
                                   dataset, **{n: sizes[n] for n in ("features", "dense")
                                               if n in sizes})
  loops: dict[str, Any] = {SGDLAB: sg}
  for pattern in ("scan", "step") if not scan_max_k or k <= scan_max_k else ("step",):
    loop = baselines.make_jax_loop(dataset, k, lr=lr, decay=decay, seed=seed, model=model,
                                   pattern=pattern, params=start,
                                   device=mesh.devices.flat[0], **sizes)
    loops[loop.name] = loop
  if model == "mlp" and with_torch and baselines.torch_available():
    loops[TORCH] = baselines.make_torch_loop(dataset, k, lr=lr, decay=decay, seed=seed,
                                             hidden=sizes.get("hidden", baselines.HIDDEN),
                                             threads=torch_threads)
  return loops


def _params(loop: Any, model: str) -> list[np.ndarray]:
  if isinstance(loop, bench.RunEpochs):
    return baselines.sgdlab_params(loop.params(), model)
  return loop.params()


def benchmark(dataset: data.Dataset, batch_sizes: list[int], *, epochs: int, repeats: int,
              mesh: Mesh, model: str = "mlp", lr: float = 0.1, decay: float = 1e-3,
              seed: int = 0, with_torch: bool = True, torch_threads: int = 2,
              prune: float = 3.0, cnn_steps: int = 0, scan_max_k: int = 0,
              **sizes) -> list[Result]:
  """Build and warm every loop, then time them in alternation; one Result per k.

  cnn_steps > 0 tiles the training set to that many full batches at each k.
  """
  loops, parity, sets = {}, {}, {}
  for k in batch_sizes:
    sets[k] = bench.tiled(dataset, cnn_steps * k) if cnn_steps else dataset
    loops[k] = build_loops(sets[k], k, mesh, model=model, lr=lr, decay=decay, seed=seed,
                           with_torch=with_torch, torch_threads=torch_threads, sizes=sizes,
                           scan_max_k=scan_max_k)
    for loop in loops[k].values():
      loop.run_epoch(0)  # warm-up: first-call allocations and caches
    reference = _params(loops[k][SGDLAB], model)
    parity[k] = {n: bench.max_param_diff(reference, l.params())
                 for n, l in loops[k].items() if n in HAND}
    logging.info("k=%d: built %s; max |dparam| to sgdlab after 1 epoch: %s", k,
                 list(loops[k]), parity[k])
  timings = {k: bench.Timings() for k in batch_sizes}
  last_loss: dict[int, dict[str, float]] = {k: {} for k in batch_sizes}
  for r in range(repeats):
    for k in batch_sizes:
      kept = {n: _Last(l, last_loss[k], n) for n, l in loops[k].items()}
      bench.alternate(kept, epochs, start=r * epochs, order="rotate", last=(TORCH,),
                      pause=SETTLE_S, prune=prune, timings=timings[k])
      if r == 0 and timings[k].pruned:
        logging.info("k=%d: %s over %.1fx the best; timed once", k,
                     sorted(timings[k].pruned), prune)
    logging.info("repeat %d/%d done", r + 1, repeats)
  for k in batch_sizes:
    bad = {name: v for name, v in last_loss[k].items() if not math.isfinite(v)}
    if bad:
      raise FloatingPointError(f"k={k}: loss not finite {bad}; lower the learning rate")
  return [Result(k, timings[k], parity[k], last_loss[k], sets[k].n_train)
          for k in batch_sizes]


def format_table(results: list[Result]) -> str:
  """Markdown: ex/s as median (min-max over epochs), ratios as median (IQR over rounds)."""
  has_torch = any(TORCH in r.epoch_times for r in results)
  head = ["k", "sgdlab ex/s", "JAX scan ex/s", "JAX per-step ex/s",
          "sgdlab / best JAX", "same, CPU time"]
  if has_torch:
    head += ["PyTorch ex/s", "sgdlab / PyTorch"]
  rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

  def fmt_rate(r, name):
    if name not in r.epoch_times:
      return "not run"
    m = r.examples_per_sec(name)
    once = " (once)" if len(r.epoch_times[name]) == 1 else f" ({m[1]:,.0f}-{m[2]:,.0f})"
    return f"{m[0]:,.0f}" + once

  def fmt_ratio(m):
    return f"{m[0]:.2f}x ({m[1]:.2f}-{m[2]:.2f})"  # median (IQR)

  for r in results:
    best = "scan" if r.best_hand == JAX_LOOP else "per-step"
    cells = [str(r.k), fmt_rate(r, SGDLAB), fmt_rate(r, JAX_LOOP), fmt_rate(r, JAX_STEP),
             f"{fmt_ratio(r.ratio(SGDLAB))} vs {best}", fmt_ratio(r.ratio(SGDLAB, cpu=True))]
    if has_torch:
      cells += ([fmt_rate(r, TORCH), fmt_ratio(r.ratio(SGDLAB, TORCH))]
                if TORCH in r.epoch_times else ["-", "-"])
    rows.append("| " + " | ".join(cells) + " |")
  return "\n".join(rows)


def measure(config: ml_collections.ConfigDict) -> list[Result]:
  """The benchmark a config describes (experiments/benchmark_throughput.py), printed."""
  c = config
  load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  dataset = bench.load_mnist()
  if c.n_train:
    dataset = bench.tiled(dataset, c.n_train)
  mesh = step.make_mesh(jax.devices()[:1])  # one device: the hand loops use one
  results = benchmark(dataset, list(c.batch_sizes), epochs=c.epochs, repeats=c.repeats,
                      mesh=mesh, model=c.model, lr=c.learning_rate, decay=c.lr_decay,
                      with_torch=c.torch, torch_threads=c.torch_threads, prune=c.prune,
                      cnn_steps=c.cnn_steps if c.model == "cnn" else 0,
                      scan_max_k=c.hand_scan_max_k, hidden=tuple(c.hidden))
  load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  what = (f"MLP 784-{'-'.join(map(str, c.hidden))}-10, {dataset.n_train} MNIST examples per "
          f"epoch" if c.model == "mlp" else f"Keras MNIST CNN, {c.cnn_steps} steps per "
          "timed epoch")
  print(f"{what}, one {jax.devices()[0].device_kind} device ({bench.machine_description()}; "
        f"load average {load_before:.1f} before, {load_after:.1f} after); jax "
        f"{jax.__version__}; {c.repeats} repeats x {c.epochs} epochs per loop. "
        f"ex/s: median (min-max) over epochs; ratios: median (interquartile range) over "
        f"rounds, of wall time unless marked CPU time.")
  if c.model == "mlp" and c.torch and baselines.torch_available():
    import torch  # pylint: disable=g-import-not-at-top
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads.")
  print(format_table(results))
  for r in results:
    print(f"k={r.k}: max |param difference| to sgdlab after one epoch: "
          + ", ".join(f"{n} {v:.1e}" for n, v in r.parity.items()) + "; last losses "
          + ", ".join(f"{name} {v:.4f}" for name, v in r.final_loss.items()))
  return results
