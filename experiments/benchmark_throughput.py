r"""Throughput of sgdlab's compiled epoch against a hand-written JAX loop and PyTorch.

  python experiments/benchmark_throughput.py [--epochs 3] [--repeats 5]

Same MLP 784-512-512-10, same 4,000 bundled MNIST training digits, plain SGD with
Keras inverse-time decay, on one device. Three loops, each seeing every example once
per epoch:
* sgdlab: the Run the trainer builds (`sgdlab.train.run.create_run`): its epoch plan
  and advance program, plus the host syncs the loop does per epoch (per-step metrics,
  diverged_at); the test-set evaluation the loop adds is left out, as the other loops
  have none.
* JAX loop: a pure-jnp MLP and optax.sgd, data on device, one jitted epoch of
  permutation + gather + `lax.scan` over full batches, then one step on the remainder.
* PyTorch (only if `import torch` works): a plain loop over pre-shuffled CPU tensors,
  2 threads (--torch_threads), no DataLoader.

The JAX loop starts from sgdlab's initial parameters and sees the same batch order,
so after the warm-up epoch the two must hold the same parameters: the script prints
the largest difference, which shows the comparison is like for like. Compilation and
the warm-up epoch are not timed. The loops are alternated one epoch at a time, so
that load from other processes falls on all of them: a round times one epoch of
each loop back to back; sgdlab and the JAX loop take turns going first, PyTorch
goes last and is followed by a short untimed pause.

The table gives the median examples/s over all timed epochs with their spread
(min-max), and the median and interquartile range of the per-round ratios, of wall
time and of this process's CPU time (steadier when other processes share the cores).
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from jax.sharding import Mesh

from sgdlab import config as config_lib
from sgdlab import data
from sgdlab.train import run as run_lib
from sgdlab.train import step

_EPOCHS = flags.DEFINE_integer("epochs", 3, "Timed epochs per loop and k in each repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Passes over all batch sizes.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["32", "256", "2048"], "Batch sizes k.")
_LR = flags.DEFINE_float("learning_rate", 0.1, "SGD learning rate (stays finite at k=32).")
_DECAY = flags.DEFINE_float("lr_decay", 1e-3, "Inverse-time decay per step.")
_TORCH = flags.DEFINE_bool("torch", True, "Include the PyTorch loop if torch imports.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads for its loop.")

JAX_LOOP, SGDLAB, TORCH = "jax loop", "sgdlab", "pytorch"
_SETTLE_S = 0.3  # pause after each PyTorch epoch (untimed)
HIDDEN = (512, 512)


@dataclasses.dataclass
class Loop:
  """A compiled, warmed-up training loop: `run_epoch(e)` trains epoch e and blocks."""

  name: str
  run_epoch: Callable[[int], float]  # returns the epoch's last-step loss
  params: Callable[[], list[tuple[np.ndarray, np.ndarray]]]  # [(kernel [in, out], bias)]


def load_mnist() -> data.Dataset:
  """The bundled 4,000 / 1,000 MNIST split, as the classic experiment uses it."""
  return data.load(config_lib.default_config().data)


def _bench_config(k: int, lr: float, decay: float, seed: int, hidden: tuple[int, ...]):
  c = config_lib.default_config()
  c.model.name, c.model.hidden, c.model.dropout = "mlp", tuple(hidden), 0.0
  c.optimizer.name, c.schedule.name = "sgd", "inverse_time"
  c.batch_size, c.learning_rate, c.lr_decay, c.seed = k, lr, decay, seed
  return c


def _flax_to_layers(params: Any) -> list[tuple[np.ndarray, np.ndarray]]:
  dense = sorted((n for n in params if n.startswith("dense")), key=lambda n: int(n[5:]))
  names = [*dense, "logits"]
  return [(np.array(params[n]["kernel"]), np.array(params[n]["bias"])) for n in names]


def make_sgdlab_loop(dataset: data.Dataset, k: int, mesh: Mesh, *, lr: float, decay: float,
                     seed: int = 0, hidden: tuple[int, ...] = HIDDEN) -> Loop:
  """sgdlab's own Run, built and driven as `sgdlab.train.loop` does."""
  config = _bench_config(k, lr, decay, seed, hidden)
  resolved = config_lib.resolve(config, n_devices=mesh.size, spec=dataset.spec())
  run = run_lib.create_run(resolved, dataset, mesh)
  box = dict(state=run.init_state())

  def run_epoch(e: int) -> float:
    box["state"], metrics = run.advance(box["state"], run.plan(e))
    metrics = jax.device_get(metrics)  # the loop's one sync per epoch
    if int(box["state"].diverged_at) >= 0:
      raise FloatingPointError(f"sgdlab diverged at k={k}; lower --learning_rate")
    return float(metrics["loss"][-1])

  return Loop(SGDLAB, run_epoch, lambda: _flax_to_layers(box["state"].params))


def init_mlp(key: jax.Array, sizes: tuple[int, ...]) -> list[tuple[jax.Array, jax.Array]]:
  """LeCun-normal kernels and zero biases (flax.linen.Dense's defaults)."""
  layers = []
  for key, (n_in, n_out) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes, sizes[1:])):
    # 0.8796...: the std of a unit normal truncated to [-2, 2], divided out as flax does.
    w = jax.random.truncated_normal(key, -2.0, 2.0, (n_in, n_out)) / (0.87962566 * n_in**0.5)
    layers.append((w, jnp.zeros((n_out,))))
  return layers


def _mlp_loss(layers, x, y):
  for w, b in layers[:-1]:
    x = jax.nn.relu(x @ w + b)
  w, b = layers[-1]
  return optax.softmax_cross_entropy_with_integer_labels(x @ w + b, y).mean()


def make_jax_loop(dataset: data.Dataset, k: int, *, lr: float, decay: float, seed: int = 0,
                  hidden: tuple[int, ...] = HIDDEN, layers: list | None = None,
                  device: jax.Device | None = None) -> Loop:
  """The minimal hand-written loop sgdlab is measured against.

  `layers` sets the initial parameters (default: `init_mlp`); the batch order is
  sgdlab's: a permutation from fold_in(fold_in(PRNGKey(seed), 1), epoch).
  """
  device = jax.devices()[0] if device is None else device
  n = dataset.n_train
  x = jax.device_put(dataset.x_train.reshape(n, -1), device)
  y = jax.device_put(dataset.y_train, device)
  if layers is None:
    layers = init_mlp(jax.random.PRNGKey(seed), (x.shape[1], *hidden, dataset.num_classes))
  tx = optax.sgd(lambda t: lr / (1.0 + decay * t))
  full, rest = divmod(n, k)

  def epoch(layers, opt_state, key, e):
    order = jax.random.permutation(jax.random.fold_in(key, e), n)

    def sgd_step(carry, idx):
      layers, opt_state = carry
      loss, grads = jax.value_and_grad(_mlp_loss)(layers, x[idx], y[idx])
      updates, opt_state = tx.update(grads, opt_state)
      return (optax.apply_updates(layers, updates), opt_state), loss

    carry, losses = jax.lax.scan(sgd_step, (layers, opt_state),
                                 order[:full * k].reshape(full, k))
    if rest:  # the last partial batch, at its own size
      carry, last = sgd_step(carry, order[full * k:])
      losses = jnp.append(losses, last)
    return (*carry, losses)

  layers = jax.device_put(layers, device)
  box = dict(layers=layers, opt_state=tx.init(layers))
  key = jax.device_put(jax.random.fold_in(jax.random.PRNGKey(seed), 1), device)
  epoch_fn = jax.jit(epoch, donate_argnums=(0, 1)).lower(
      box["layers"], box["opt_state"], key, jnp.int32(0)).compile()

  def run_epoch(e: int) -> float:
    box["layers"], box["opt_state"], losses = epoch_fn(box["layers"], box["opt_state"], key,
                                                       jnp.int32(e))
    return float(jax.device_get(losses)[-1])

  return Loop(JAX_LOOP, run_epoch,
              lambda: [(np.array(w), np.array(b)) for w, b in box["layers"]])


def torch_available() -> bool:
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def make_torch_loop(dataset: data.Dataset, k: int, *, lr: float, decay: float,
                    seed: int = 0, hidden: tuple[int, ...] = HIDDEN, threads: int = 2) -> Loop:
  """A plain PyTorch CPU loop: shuffle the tensors once per epoch, slice batches."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(threads)
  torch.manual_seed(seed)
  n = dataset.n_train
  x = torch.from_numpy(dataset.x_train.reshape(n, -1).copy())
  y = torch.from_numpy(dataset.y_train.astype(np.int64))
  sizes = (x.shape[1], *hidden, dataset.num_classes)
  layers = []
  for n_in, n_out in zip(sizes, sizes[1:]):
    layers += [nn.Linear(n_in, n_out), nn.ReLU()]
  model = nn.Sequential(*layers[:-1])
  opt = torch.optim.SGD(model.parameters(), lr=lr)
  loss_fn = nn.CrossEntropyLoss()
  generator = torch.Generator().manual_seed(seed)
  count = [0]

  def run_epoch(e: int) -> float:
    del e  # torch's own stream gives the order
    order = torch.randperm(n, generator=generator)
    xs, ys = x[order], y[order]
    for i in range(0, n, k):
      for group in opt.param_groups:
        group["lr"] = lr / (1.0 + decay * count[0])
      opt.zero_grad(set_to_none=True)
      loss = loss_fn(model(xs[i:i + k]), ys[i:i + k])
      loss.backward()
      opt.step()
      count[0] += 1
    return float(loss.item())

  def params():
    linears = [m for m in model if isinstance(m, nn.Linear)]
    return [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
            for m in linears]

  return Loop(TORCH, run_epoch, params)


def max_param_diff(a: list, b: list) -> float:
  """Largest absolute difference between two [(kernel, bias)] parameter lists."""
  return max(float(np.max(np.abs(p - q))) for la, lb in zip(a, b) for p, q in zip(la, lb))


@dataclasses.dataclass
class Result:
  """Timings of every loop at one batch size k, aligned by round."""

  k: int
  epoch_times: dict[str, list[float]]  # loop -> seconds of each timed round's epoch
  cpu_times: dict[str, list[float]]  # loop -> this process's CPU seconds, same epochs
  parity: float  # max |param| difference sgdlab vs JAX loop after the warm-up epoch
  final_loss: dict[str, float]
  n_train: int

  def examples_per_sec(self, name: str) -> tuple[float, float, float]:
    """(median, min, max) examples/s over all timed epochs."""
    t = self.epoch_times[name]
    return self.n_train / statistics.median(t), self.n_train / max(t), self.n_train / min(t)

  def ratio(self, name: str, base: str = JAX_LOOP,
            cpu: bool = False) -> tuple[float, float, float]:
    """(median, 25th, 75th percentile) of the throughput ratio name / base per round.

    Each round times one epoch of every loop back to back, so a ratio within a round
    sees nearly the same machine load on both sides. cpu=True compares CPU time
    instead of wall time: on a shared machine it is far less noisy.
    """
    times = self.cpu_times if cpu else self.epoch_times
    r = [b / a for a, b in zip(times[name], times[base])]
    q25, q50, q75 = np.percentile(r, [25, 50, 75])
    return float(q50), float(q25), float(q75)


def benchmark(dataset: data.Dataset, batch_sizes: list[int], *, epochs: int, repeats: int,
              mesh: Mesh, lr: float = 0.1, decay: float = 1e-3, seed: int = 0,
              hidden: tuple[int, ...] = HIDDEN, with_torch: bool = True,
              torch_threads: int = 2) -> list[Result]:
  """Build and warm every loop, then time them in alternation; one Result per k."""
  loops, parity = {}, {}
  for k in batch_sizes:
    sg = make_sgdlab_loop(dataset, k, mesh, lr=lr, decay=decay, seed=seed, hidden=hidden)
    jl = make_jax_loop(dataset, k, lr=lr, decay=decay, seed=seed, hidden=hidden,
                       layers=sg.params(), device=mesh.devices.flat[0])
    loops[k] = [sg, jl]
    if with_torch and torch_available():
      loops[k].append(make_torch_loop(dataset, k, lr=lr, decay=decay, seed=seed,
                                      hidden=hidden, threads=torch_threads))
    for loop in loops[k]:
      loop.run_epoch(0)  # warm-up: first-call allocations and caches
    parity[k] = max_param_diff(sg.params(), jl.params())
    logging.info("k=%d: built %s; sgdlab vs jax loop after 1 epoch: max |dparam| %.2e", k,
                 [l.name for l in loops[k]], parity[k])

  epoch_times = {k: {l.name: [] for l in loops[k]} for k in batch_sizes}
  cpu_times = {k: {l.name: [] for l in loops[k]} for k in batch_sizes}
  last_loss = {k: {} for k in batch_sizes}
  for r in range(repeats):
    for k in batch_sizes:
      for i in range(epochs):
        # A round: one epoch of each loop. sgdlab and the JAX loop take turns going
        # first; PyTorch goes last, then a pause lets its spinning worker threads park
        # so that they do not slow whichever JAX loop comes next.
        pair = loops[k][:2] if (r * epochs + i) % 2 == 0 else loops[k][1::-1]
        for loop in pair + loops[k][2:]:
          start, start_cpu = time.perf_counter(), time.process_time()
          last_loss[k][loop.name] = loop.run_epoch(1 + r * epochs + i)
          epoch_times[k][loop.name].append(time.perf_counter() - start)
          cpu_times[k][loop.name].append(time.process_time() - start_cpu)
          if loop.name == TORCH:
            time.sleep(_SETTLE_S)
    logging.info("repeat %d/%d done", r + 1, repeats)
  for k in batch_sizes:
    bad = {name: v for name, v in last_loss[k].items() if not math.isfinite(v)}
    if bad:
      raise FloatingPointError(f"k={k}: loss not finite {bad}; lower the learning rate")
  return [Result(k, epoch_times[k], cpu_times[k], parity[k], last_loss[k], dataset.n_train)
          for k in batch_sizes]


def format_table(results: list[Result]) -> str:
  """Markdown: ex/s as median (min-max over epochs), ratios as median (IQR over rounds)."""
  has_torch = any(TORCH in r.epoch_times for r in results)
  head = ["k", "sgdlab ex/s", "JAX loop ex/s", "sgdlab / JAX loop", "same, CPU time"]
  if has_torch:
    head += ["PyTorch ex/s", "sgdlab / PyTorch"]
  rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  fmt_rate = lambda m: f"{m[0]:,.0f} ({m[1]:,.0f}-{m[2]:,.0f})"
  fmt_ratio = lambda m: f"{m[0]:.2f}x ({m[1]:.2f}-{m[2]:.2f})"  # median (IQR)
  for r in results:
    cells = [str(r.k), fmt_rate(r.examples_per_sec(SGDLAB)),
             fmt_rate(r.examples_per_sec(JAX_LOOP)), fmt_ratio(r.ratio(SGDLAB)),
             fmt_ratio(r.ratio(SGDLAB, cpu=True))]
    if has_torch:
      cells += ([fmt_rate(r.examples_per_sec(TORCH)), fmt_ratio(r.ratio(SGDLAB, TORCH))]
                if TORCH in r.epoch_times else ["-", "-"])
    rows.append("| " + " | ".join(cells) + " |")
  return "\n".join(rows)


def machine_description() -> str:
  """CPU model and core count (Linux), or the platform string elsewhere."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      model = next(line.split(":", 1)[1].strip() for line in f
                   if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return f"{model}, {os.cpu_count()} cores"


def main(argv: list[str]) -> None:
  del argv
  load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  dataset = load_mnist()
  mesh = step.make_mesh(jax.devices()[:1])  # one device: the JAX and torch loops use one
  batch_sizes = [int(k) for k in _BATCH_SIZES.value]
  results = benchmark(dataset, batch_sizes, epochs=_EPOCHS.value, repeats=_REPEATS.value,
                      mesh=mesh, lr=_LR.value, decay=_DECAY.value, with_torch=_TORCH.value,
                      torch_threads=_TORCH_THREADS.value)
  load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  print(f"MLP 784-512-512-10, {dataset.n_train} MNIST examples per epoch, one "
        f"{jax.devices()[0].device_kind} device ({machine_description()}; load average "
        f"{load_before:.1f} before, {load_after:.1f} after); jax {jax.__version__}; "
        f"{_REPEATS.value} repeats x {_EPOCHS.value} epochs per loop. ex/s: median "
        f"(min-max) over epochs; ratios: median (interquartile range) over rounds, of "
        f"wall time unless marked CPU time.")
  if _TORCH.value and torch_available():
    import torch  # pylint: disable=g-import-not-at-top
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads.")
  print(format_table(results))
  for r in results:
    print(f"k={r.k}: sgdlab vs JAX loop, max |param difference| after one epoch "
          f"{r.parity:.1e}; last losses "
          + ", ".join(f"{name} {v:.4f}" for name, v in r.final_loss.items()))


if __name__ == "__main__":
  app.run(main)
