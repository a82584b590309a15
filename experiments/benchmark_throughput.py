r"""Throughput of sgdlab's compiled training against hand-written JAX loops and PyTorch.

  python experiments/benchmark_throughput.py [--model=mlp|cnn] [--epochs 3] [--repeats 5]

--model=mlp: MLP 784-512-512-10 on the 4,000 bundled MNIST training digits, an epoch
each. --model=cnn: Keras' mnist_cnn (conv32-conv64-maxpool-dense128, dropout off so the
loops can match) on those digits tiled to --cnn_steps full batches, so every k is timed
over the same fixed number of steps. Plain SGD with Keras inverse-time decay, one device.
The loops (experiments/throughput_loops.py): sgdlab's Run as the trainer drives it; the
hand-written JAX patterns, one jitted scan per epoch and Flax's examples' jit per step;
PyTorch (MLP only, if `import torch` works; 2 threads, no DataLoader).

All loops start from sgdlab's initial parameters and see the same batch order, so after
the warm-up epoch they hold the same parameters: the script prints the largest
difference, which shows the comparison is like for like. Compilation and the warm-up
epoch are not timed. The loops are alternated one epoch at a time so that load from
other processes falls on all of them: a round times one epoch of each loop back to
back, the JAX loops in rotating order; PyTorch goes last, then a short untimed pause.
A loop slower than --prune x the best in the first round is timed in that round only
(plain XLA's CNN scan at k=256 takes 16 s per step); --hand_scan_max_k leaves it out
above a k (at k=2048 it did not finish its 2-step warm-up epoch in 16 minutes).

The table gives the median examples/s over timed epochs with their spread (min-max),
and the median and interquartile range of the per-round ratio of sgdlab to the best
hand-written JAX pattern (the faster median), of wall time and of this process's CPU
time (steadier when other processes share the cores).
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags, logging
from jax.sharding import Mesh

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=g-import-not-at-top,wrong-import-position
import throughput_loops as loops_lib
from throughput_loops import JAX_LOOP, JAX_STEP, SGDLAB, TORCH, load_mnist, machine_description
from sgdlab import data
from sgdlab.train import step

_MODEL = flags.DEFINE_enum("model", "mlp", ["mlp", "cnn"], "Model to time.")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Timed epochs per loop and k in each repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Passes over all batch sizes.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["32", "256", "2048"], "Batch sizes k.")
_CNN_STEPS = flags.DEFINE_integer("cnn_steps", 4, "CNN: steps per timed epoch.")
_PRUNE = flags.DEFINE_float("prune", 3.0, "Time a loop this much slower once only.")
_SCAN_MAX_K = flags.DEFINE_integer(
    "hand_scan_max_k", 0, "Build the hand-written scan loop only up to this k (0: all).")
_LR = flags.DEFINE_float("learning_rate", 0.1, "SGD learning rate (stays finite at k=32).")
_DECAY = flags.DEFINE_float("lr_decay", 1e-3, "Inverse-time decay per step.")
_TORCH = flags.DEFINE_bool("torch", True, "Include the PyTorch loop if torch imports.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads for its loop.")

_SETTLE_S = 0.3  # pause after each PyTorch epoch (untimed)
HAND = (JAX_LOOP, JAX_STEP)


def tiled(dataset: data.Dataset, n: int) -> data.Dataset:
  """The training digits repeated to n examples: a fixed number of steps at any k."""
  idx = np.arange(n) % dataset.n_train
  return dataclasses.replace(dataset, x_train=dataset.x_train[idx],
                             y_train=dataset.y_train[idx])


def build_loops(dataset: data.Dataset, k: int, mesh: Mesh, *, model: str, lr: float,
                decay: float, seed: int, with_torch: bool, torch_threads: int,
                sizes: dict, scan_max_k: int = 0) -> list[loops_lib.Loop]:
  sg = loops_lib.make_sgdlab_loop(dataset, k, mesh, lr=lr, decay=decay, seed=seed,
                                  model=model, **sizes)
  loops = [sg]
  for pattern in ("scan", "step") if not scan_max_k or k <= scan_max_k else ("step",):
    loops.append(loops_lib.make_jax_loop(
        dataset, k, lr=lr, decay=decay, seed=seed, model=model, pattern=pattern,
        params=initial_params(sg, model, sizes, dataset), device=mesh.devices.flat[0], **sizes))
  if model == "mlp" and with_torch and loops_lib.torch_available():
    loops.append(loops_lib.make_torch_loop(dataset, k, lr=lr, decay=decay, seed=seed,
                                           hidden=sizes.get("hidden", loops_lib.HIDDEN),
                                           threads=torch_threads))
  return loops


def initial_params(sg: loops_lib.Loop, model: str, sizes: dict, dataset: data.Dataset):
  """sgdlab's initial parameters in the hand-written loop's structure."""
  leaves = sg.params()
  if model == "mlp":
    return [(leaves[i], leaves[i + 1]) for i in range(0, len(leaves), 2)]
  net = loops_lib.KerasCNN(tuple(sizes.get("features", loops_lib.CNN_FEATURES)),
                           sizes.get("dense", loops_lib.CNN_DENSE))
  tree = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), dataset.x_train[:1]))["params"]
  return jax.tree.unflatten(jax.tree.structure(tree), leaves)


@dataclasses.dataclass
class Result:
  """Timings of every loop at one batch size k, aligned by round."""

  k: int
  epoch_times: dict[str, list[float]]  # loop -> seconds of each timed round's epoch
  cpu_times: dict[str, list[float]]  # loop -> this process's CPU seconds, same epochs
  parity: dict[str, float]  # loop -> max |param| difference to sgdlab after warm-up
  final_loss: dict[str, float]
  n_train: int

  def examples_per_sec(self, name: str) -> tuple[float, float, float]:
    """(median, min, max) examples/s over all timed epochs."""
    t = self.epoch_times[name]
    return self.n_train / statistics.median(t), self.n_train / max(t), self.n_train / min(t)

  @property
  def best_hand(self) -> str:
    """The hand-written JAX pattern with the higher median throughput."""
    return max((n for n in HAND if n in self.epoch_times),
               key=lambda n: self.examples_per_sec(n)[0])

  def ratio(self, name: str, base: str | None = None,
            cpu: bool = False) -> tuple[float, float, float]:
    """(median, 25th, 75th percentile) of the throughput ratio name / base per round
    (base: the best hand-written pattern).

    Each round times one epoch of every loop back to back, so a ratio within a round
    sees nearly the same machine load on both sides. cpu=True compares CPU time
    instead of wall time: on a shared machine it is far less noisy.
    """
    base = base or self.best_hand
    times = self.cpu_times if cpu else self.epoch_times
    r = [b / a for a, b in zip(times[name], times[base])]
    q25, q50, q75 = np.percentile(r, [25, 50, 75])
    return float(q50), float(q25), float(q75)


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
    sets[k] = tiled(dataset, cnn_steps * k) if cnn_steps else dataset
    loops[k] = build_loops(sets[k], k, mesh, model=model, lr=lr, decay=decay, seed=seed,
                           with_torch=with_torch, torch_threads=torch_threads, sizes=sizes,
                           scan_max_k=scan_max_k)
    for loop in loops[k]:
      loop.run_epoch(0)  # warm-up: first-call allocations and caches
    parity[k] = {l.name: loops_lib.max_param_diff(loops[k][0].params(), l.params())
                 for l in loops[k] if l.name in HAND}
    logging.info("k=%d: built %s; max |dparam| to sgdlab after 1 epoch: %s", k,
                 [l.name for l in loops[k]], parity[k])

  names = {k: [l.name for l in loops[k]] for k in batch_sizes}
  epoch_times = {k: {n: [] for n in names[k]} for k in batch_sizes}
  cpu_times = {k: {n: [] for n in names[k]} for k in batch_sizes}
  last_loss = {k: {} for k in batch_sizes}
  pruned = {k: set() for k in batch_sizes}
  for r in range(repeats):
    for k in batch_sizes:
      for i in range(epochs):
        # A round: one epoch of each loop, the three JAX loops in rotating order;
        # PyTorch goes last, then a pause lets its spinning worker threads park.
        n_jax = sum(l.name != TORCH for l in loops[k])
        turn = (r * epochs + i) % n_jax
        jax_loops = loops[k][turn:n_jax] + loops[k][:turn]
        for loop in jax_loops + loops[k][n_jax:]:
          if loop.name in pruned[k]:
            continue
          start, start_cpu = time.perf_counter(), time.process_time()
          last_loss[k][loop.name] = loop.run_epoch(1 + r * epochs + i)
          epoch_times[k][loop.name].append(time.perf_counter() - start)
          cpu_times[k][loop.name].append(time.process_time() - start_cpu)
          if loop.name == TORCH:
            time.sleep(_SETTLE_S)
        if r == 0 and i == 0:
          best = min(t[0] for t in epoch_times[k].values())
          pruned[k] = {n for n, t in epoch_times[k].items() if t[0] > max(prune, 1.0) * best}
          if pruned[k]:
            logging.info("k=%d: %s over %.1fx the best; timed once", k, sorted(pruned[k]),
                         prune)
    logging.info("repeat %d/%d done", r + 1, repeats)
  for k in batch_sizes:
    bad = {name: v for name, v in last_loss[k].items() if not math.isfinite(v)}
    if bad:
      raise FloatingPointError(f"k={k}: loss not finite {bad}; lower the learning rate")
  return [Result(k, epoch_times[k], cpu_times[k], parity[k], last_loss[k], sets[k].n_train)
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


def main(argv: list[str]) -> None:
  del argv
  load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  dataset = load_mnist()
  mesh = step.make_mesh(jax.devices()[:1])  # one device: the hand loops use one
  model = _MODEL.value
  results = benchmark(dataset, [int(k) for k in _BATCH_SIZES.value], epochs=_EPOCHS.value,
                      repeats=_REPEATS.value, mesh=mesh, model=model, lr=_LR.value,
                      decay=_DECAY.value, with_torch=_TORCH.value,
                      torch_threads=_TORCH_THREADS.value, prune=_PRUNE.value,
                      cnn_steps=_CNN_STEPS.value if model == "cnn" else 0,
                      scan_max_k=_SCAN_MAX_K.value)
  load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  what = (f"MLP 784-512-512-10, {dataset.n_train} MNIST examples per epoch" if model == "mlp"
          else f"Keras MNIST CNN, {_CNN_STEPS.value} steps per timed epoch")
  print(f"{what}, one {jax.devices()[0].device_kind} device ({machine_description()}; "
        f"load average {load_before:.1f} before, {load_after:.1f} after); jax "
        f"{jax.__version__}; {_REPEATS.value} repeats x {_EPOCHS.value} epochs per loop. "
        f"ex/s: median (min-max) over epochs; ratios: median (interquartile range) over "
        f"rounds, of wall time unless marked CPU time.")
  if model == "mlp" and _TORCH.value and loops_lib.torch_available():
    import torch  # pylint: disable=g-import-not-at-top
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads.")
  print(format_table(results))
  for r in results:
    print(f"k={r.k}: max |param difference| to sgdlab after one epoch: "
          + ", ".join(f"{n} {v:.1e}" for n, v in r.parity.items()) + "; last losses "
          + ", ".join(f"{name} {v:.4f}" for name, v in r.final_loss.items()))


if __name__ == "__main__":
  app.run(main)
