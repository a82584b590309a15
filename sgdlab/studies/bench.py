"""The benchmark harness: whole epochs through the Run, timed in alternating rounds.

Every benchmark times sgdlab's training as `sgdlab.train.loop` runs it: a Run
(`sgdlab.train.run.create_run`), each epoch's calls of steps_per_call steps
(`Run.feed` / `Run.advance`), then the loop's one host sync (`RunEpochs`). What it is
compared with (hand-written loops, `sgdlab.studies.baselines`; other settings of the
Run) is any object with `run_epoch(epoch)`. `alternate` times them one turn each per
round, so that load from other processes falls on all of them alike; `Timings` keeps
wall and process CPU seconds per turn (CPU time is steadier on a shared machine).
Compilation and a warm-up epoch are never timed.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from sgdlab import config as config_lib
from sgdlab import data, noise
from sgdlab.train import loop as loop_lib
from sgdlab.train import records, run as run_lib, step

SGDLAB = "sgdlab"


class RunEpochs:
  """sgdlab's side of every benchmark: a Run trained one whole epoch per call.

  `host(metrics)`, if given, is per-epoch host work timed with the epoch (the loop's
  noise bookkeeping: `NoiseHost`). A run whose every member diverged raises: its
  timings would be of frozen steps.
  """

  def __init__(self, run: run_lib.Run, *, state: step.TrainState | None = None,
               host: Callable[[dict[str, np.ndarray]], None] | None = None,
               name: str = SGDLAB):
    self.run, self.name, self.host = run, name, host
    self.state = run.init_state() if state is None else state
    self.metrics: dict[str, np.ndarray] = {}

  def run_epoch(self, epoch: int) -> float:
    """Train epoch `epoch`; its last step's loss (the first member's)."""
    program = self.run.program
    per_epoch, done, parts = program.steps_per_epoch, 0, []
    for n in loop_lib.chunks(per_epoch, program.steps_per_call, binary=False):
      self.state, metrics = self.run.advance(self.state, self.run.feed(epoch, done, n))
      parts.append(metrics)
      done += n
      if self.run.block_each_call:  # as the loop does: multi-device CPU collectives
        jax.block_until_ready(self.state.step)
    parts = jax.device_get(parts)  # the loop's one host sync per epoch
    axis = 1 if program.population else 0
    self.metrics = {k: np.concatenate([p[k] for p in parts], axis=axis) for k in parts[0]}
    if np.all(np.asarray(jax.device_get(self.state.diverged_at)) >= 0):
      raise FloatingPointError(f"{self.name} diverged at k={program.first.batch_size}; "
                               "lower the learning rate")
    if self.host is not None:
      self.host(self.metrics)
    loss = self.metrics["loss"]
    return float(loss[0, -1] if program.population else loss[-1])

  def params(self) -> Any:
    return jax.device_get(self.state.params)


class NoiseHost:
  """The loop's host work for the online noise scale (`records.append_steps`: per-step
  estimates and their EMA) as a `RunEpochs` host; `history.steps` holds what it kept."""

  def __init__(self, run: run_lib.Run):
    member = run.members[0]
    self.history = records.new_history(member, run.program.splits, run.compile_time)
    self.ema = noise.NoiseEMA(member.config.noise_ema)

  def __call__(self, metrics: dict[str, np.ndarray]) -> None:
    records.append_steps(self.history, metrics, self.ema)


@dataclasses.dataclass
class Timings:
  """Wall and process CPU seconds of each timed turn, per name, aligned by round."""

  wall: dict[str, list[float]] = dataclasses.field(default_factory=dict)
  cpu: dict[str, list[float]] = dataclasses.field(default_factory=dict)
  pruned: set[str] = dataclasses.field(default_factory=set)  # timed in the first turn only

  def time(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    self.wall.setdefault(name, []).append(time.perf_counter() - start)
    self.cpu.setdefault(name, []).append(time.process_time() - start_cpu)
    return out

  def rate(self, name: str, examples: float) -> tuple[float, float, float]:
    """(median, min, max) of examples per second over the timed turns."""
    t = self.wall[name]
    return examples / statistics.median(t), examples / max(t), examples / min(t)

  def ratio(self, name: str, base: str, cpu: bool = False) -> tuple[float, float, float]:
    """(median, 25th, 75th percentile) over rounds of name's speed over base's: each
    round times both back to back, under nearly the same load."""
    times = self.cpu if cpu else self.wall
    r = [b / a for a, b in zip(times[name], times[base])]
    q25, q50, q75 = np.percentile(r, [25, 50, 75])
    return float(q50), float(q25), float(q75)


def turn_order(names: Sequence[str], r: int, order: str) -> list[str]:
  """A round's order: "fixed", "swap" (reversed every other round) or "rotate"."""
  names = list(names)
  if order == "swap":
    return names if r % 2 == 0 else names[::-1]
  if order == "rotate":
    turn = r % len(names)
    return names[turn:] + names[:turn]
  if order == "fixed":
    return names
  raise ValueError(f"order must be fixed, swap or rotate, got {order!r}")


def alternate(loops: Mapping[str, Any], rounds: int, *, epochs: int = 1, first_epoch: int = 1,
              start: int = 0, order: str = "fixed", last: Sequence[str] = (),
              pause: float = 0.0, prune: float | None = None,
              timings: Timings | None = None) -> Timings:
  """Time rounds start .. start + rounds - 1; in round g every loop trains `epochs` epochs
  in turn, epochs first_epoch + g * epochs + i (the same for all loops: the same
  batches). The loops named in `last` go after the others, each followed by an untimed
  `pause` (a thread pool's spinning workers park). With `prune`, a loop slower than
  max(prune, 1) x the best in round 0 is timed in that round only. A loop's `prepare(epoch)`,
  if it has one, runs untimed before its epoch.
  """
  timings = Timings() if timings is None else timings
  rotating = [n for n in loops if n not in last]
  for g in range(start, start + rounds):
    for name in turn_order(rotating, g, order) + [n for n in last if n in loops]:
      if name in timings.pruned:
        continue
      for i in range(epochs):
        e = first_epoch + g * epochs + i
        if hasattr(loops[name], "prepare"):
          loops[name].prepare(e)
        timings.time(name, loops[name].run_epoch, e)
      if name in last and pause:
        time.sleep(pause)
    if g == 0 and prune is not None:
      best = min(timings.wall[n][0] for n in loops)
      timings.pruned |= {n for n in loops if timings.wall[n][0] > max(prune, 1.0) * best}
  return timings


def epoch_seconds(run: run_lib.Run, rounds: int) -> float:
  """Median seconds of a Run's epoch over `rounds` epochs after a warm-up epoch."""
  epochs = RunEpochs(run)
  epochs.run_epoch(0)
  return statistics.median(alternate({SGDLAB: epochs}, rounds).wall[SGDLAB])


def bench_config(model: str, k: int, lr: float, decay: float, seed: int,
                 hidden: tuple[int, ...] = (512, 512), features: tuple[int, ...] = (32, 64),
                 dense: int = 128) -> Any:
  """Plain SGD with Keras' inverse-time decay and no dropout (so that hand-written loops
  can match); the MLP 784-512-512-10 or Keras' mnist_cnn by default."""
  c = config_lib.default_config()
  c.model.name, c.model.hidden, c.model.dropout = model, tuple(hidden), 0.0
  c.model.features, c.model.dense = tuple(features), dense
  c.model.conv_dropout = c.model.dense_dropout = 0.0
  c.optimizer.name, c.schedule.name = "sgd", "inverse_time"
  c.batch_size, c.learning_rate, c.lr_decay, c.seed = k, lr, decay, seed
  return c


def create(config: Any, dataset: data.Dataset | None, mesh: Any, **kwargs: Any) -> run_lib.Run:
  """The Run of a config (or of several: a population) on `dataset` (None: config.data)."""
  configs = config if isinstance(config, (list, tuple)) else [config]
  spec = None if dataset is None else dataset.spec()
  members = [config_lib.resolve(c, n_devices=mesh.size, spec=spec) for c in configs]
  return run_lib.create_run(members if len(members) > 1 else members[0], dataset, mesh,
                            **kwargs)


def tiled(dataset: data.Dataset, n: int) -> data.Dataset:
  """The training examples repeated to n: a fixed number of steps at any k."""
  idx = np.arange(n) % dataset.n_train
  return dataclasses.replace(dataset, x_train=dataset.x_train[idx],
                             y_train=dataset.y_train[idx])


def synthetic(n_train: int, shape: tuple[int, ...] = (28, 28, 1), num_classes: int = 10,
              seed: int = 0) -> data.Dataset:
  """Uniform noise images with random labels: shapes without files, for speed only."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=(n_train + 256, *shape)).astype(np.float32)
  y = rng.integers(0, num_classes, n_train + 256).astype(np.int32)
  return data.Dataset("synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                      num_classes)


def load_mnist() -> data.Dataset:
  """The bundled 4,000 / 1,000 MNIST split, as the classic experiment uses it."""
  return data.load(config_lib.default_config().data)


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


def max_param_diff(a: Any, b: Any) -> float:
  """Largest absolute difference between two parameter trees (or flat lists)."""
  a, b = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
  assert len(a) == len(b), (len(a), len(b))
  return max(float(np.max(np.abs(np.asarray(p) - np.asarray(q)))) for p, q in zip(a, b))
