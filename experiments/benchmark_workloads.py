r"""Throughput of sgdlab's training against a hand-written Flax loop, for ResNet-8 with
batch norm and the byte-level Transformer language model.

  python experiments/benchmark_workloads.py [--workload=resnet|transformer|both]
      [--batch_sizes=32,128] [--epochs=3] [--n_train=2048] [--conv_impl=auto]

Workloads (one device, float32, a constant learning rate, every batch full):
* resnet: ResNet-8 of width 16 (batch norm per batch, model.conv_impl="auto": sgdlab's
  matmul-form convolution gradients on CPU, XLA's (cuDNN's) on a GPU) on --n_train synthetic 32x32x3 images,
  Nesterov momentum 0.9, lr 0.05.
* transformer: 2 blocks of width 128, 4 heads, context 128, heavy-ball momentum 0.9,
  lr 0.1, on Python's own documentation (`pydoc_data.topics`, written to a temporary
  file) cut to --n_train windows per epoch. An example is a window of 128 tokens.

The loops:
* sgdlab: the Run the trainer builds (`sgdlab.train.run.create_run`), driven as
  `sgdlab.train.loop` drives it: one `run.advance(state, run.feed(epoch, 0, steps))`
  per epoch (the whole epoch one compiled scan over batches gathered on device).
* Flax: the pattern of Flax's examples: the same flax module (`run.program.model`), a
  `jax.jit`ted train_step(params, batch_stats, opt_state, x, y) with optax.sgd, called
  once per batch from Python on batches cut on the host with numpy. Batch norm's
  running averages are updated by hand from the "batch_moments" the layer records in
  training: r <- m r + (1 - m) batch moment, as sgdlab's step does.

Like for like: both loops start from sgdlab's initial parameters and running averages,
take the same steps per epoch at the same k, and read the batches in the same order
(the hand loop gets sgdlab's epoch plan on the host before its clock starts; the
indexing and window cutting it does per step are timed). After the warm-up epoch the
table gives each loop's last training loss and the test loss of its parameters and
running averages (both evaluated by sgdlab's evaluation), and the script prints the
largest parameter difference. They agree closely but not bitwise: sgdlab's loss is a
masked sum divided by the count where optax's is a mean, so the gradient is scaled at
the end rather than at the start of the backward pass; and one scan over the epoch
is fused differently from a step compiled on its own. The update itself is the same
(optax.trace then -lr, as optax.sgd does; `sgdlab.optim.direction`).

Compilation and the warm-up epoch are not timed. The loops alternate epoch by epoch,
in alternating order, so load from other processes falls on both. The table gives the
median examples/s over timed epochs (min-max), and the median over rounds of the
ratio sgdlab / Flax (above 1: sgdlab is faster).

What it shows: whether sgdlab's one-scan-per-epoch design costs or gains throughput
against the loop most Flax users write, for a convolutional model with batch norm and
for a Transformer. Both loops run the same module, so --conv_impl sets the convolution
forms for both; with --conv_impl=xla on XLA:CPU the scan is the slow side: XLA's own
convolution gradients run many times slower inside a `lax.scan` body
(sgdlab/models/conv.py; measured 6 against 163 ex/s at k=64).

Cost: each k runs 2 x (1 + --epochs) epochs of --n_train examples, plus compilation.
On 2 CPU cores: the ResNet ~200 ex/s in both loops (about a minute per k at
--n_train=2048), the Transformer ~50 ex/s (about 12 minutes per k at the defaults; use
a smaller --n_train). On an accelerator mostly compilation (not measured yet).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from jax.sharding import Mesh

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=g-import-not-at-top,wrong-import-position
from throughput_loops import machine_description
from sgdlab import config as config_lib
from sgdlab.data import pipeline
from sgdlab.train import run as run_lib
from sgdlab.train import step

WORKLOADS = ("resnet", "transformer")
SGDLAB, HAND = "sgdlab", "flax per-step"
LEARNING_RATES = {"resnet": 0.05, "transformer": 0.1}

_WORKLOAD = flags.DEFINE_enum("workload", "both", [*WORKLOADS, "both"], "Model to time.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["32", "128"], "Batch sizes k.")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Timed epochs per loop and k.")
_N_TRAIN = flags.DEFINE_integer(
    "n_train", 2048, "Examples per epoch: synthetic images, or windows of the corpus "
    "(at most what the corpus holds).")
_LR = flags.DEFINE_float("learning_rate", 0.0, "Learning rate; 0: 0.05 resnet, 0.1 LM.")
_CONV_IMPL = flags.DEFINE_enum("conv_impl", "auto", ["xla", "im2col", "auto"],
                               "ResNet: model.conv_impl, for both loops.")


def write_corpus(directory: str, n_bytes: int = 0) -> str:
  """Python's documentation topics (sorted by key) as one UTF-8 file, cut to about
  n_bytes (0: all of it) at a character boundary."""
  import pydoc_data.topics  # pylint: disable=g-import-not-at-top
  topics = pydoc_data.topics.topics
  raw = "\n\n".join(topics[key] for key in sorted(topics)).encode("utf-8")
  if n_bytes:
    raw = raw[:n_bytes].decode("utf-8", errors="ignore").encode("utf-8")
  path = os.path.join(directory, "python-docs.txt")
  with open(path, "wb") as f:
    f.write(raw)
  return path


def corpus_bytes(n_windows: int, seq_len: int, test_fraction: float) -> int:
  """File bytes whose training part holds n_windows windows of seq_len tokens (a few
  more for a character cut at the end)."""
  return math.ceil((n_windows * seq_len + 1) / (1.0 - test_fraction)) + 4


def workload_config(workload: str, k: int, *, n_train: int, lr: float = 0.0,
                    corpus_path: str = "", width: int = 0, depth: int = 0, heads: int = 4,
                    side: int = 32, seq_len: int = 128, n_test: int = 256,
                    conv_impl: str = "auto"):
  """The sgdlab config of a workload at batch size k; sizes 0 take the defaults."""
  c = config_lib.default_config()
  c.batch_size, c.seed, c.num_epochs = k, 0, 1
  c.learning_rate, c.lr_decay = lr or LEARNING_RATES[workload], 0.0
  c.schedule.name, c.drop_remainder, c.optimizer.momentum = "constant", True, 0.9
  if workload == "resnet":
    c.model.name, c.model.depth, c.model.width = "resnet", 8, width or 16
    c.model.conv_impl, c.optimizer.name = conv_impl, "nesterov"
    c.data.name, c.data.synthetic_input_shape = "synthetic", (side, side, 3)
    c.data.synthetic_n_train, c.data.synthetic_n_test = n_train, n_test
  elif workload == "transformer":
    c.model.name, c.model.width, c.model.depth = "transformer", width or 128, depth or 2
    c.model.heads, c.optimizer.name = heads, "momentum"
    c.data.name, c.data.seq_len, c.data.path = "text", seq_len, corpus_path
  else:
    raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")
  return c


@dataclasses.dataclass
class SgdlabLoop:
  """sgdlab's Run and its state: one advance call per epoch, then a host sync."""

  run: run_lib.Run
  state: step.TrainState

  def run_epoch(self, epoch: int) -> float:
    steps = self.run.program.steps_per_epoch
    self.state, metrics = self.run.advance(self.state, self.run.feed(epoch, 0, steps))
    jax.block_until_ready((self.state, metrics))
    return float(metrics["loss"][-1])

  def variables(self) -> dict[str, Any]:
    return step.eval_variables(self.state)


class FlaxLoop:
  """The hand-written loop: a jitted step per batch, batches cut on the host."""

  def __init__(self, run: run_lib.Run, initial: step.TrainState, *, lr: float,
               nesterov: bool, bn_momentum: float, device: jax.Device):
    model, spec = run.program.model, run.program.first.spec
    self.seq_len = spec.seq_len
    self.x, self.y = run.dataset.x_train, run.dataset.y_train  # host numpy
    self.window = np.arange(self.seq_len + 1)
    # Fresh copies: the step donates its inputs, and sgdlab keeps using its own.
    self.params = jax.device_put(jax.device_get(initial.params), device)
    self.batch_stats = jax.device_put(jax.device_get(initial.batch_stats), device)
    has_bn = bool(jax.tree.leaves(self.batch_stats))
    tx = optax.sgd(lr, momentum=0.9, nesterov=nesterov)
    self.opt_state = jax.device_put(tx.init(self.params), device)

    def loss_fn(params, batch_stats, x, y):
      if has_bn:
        logits, new = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                  train=True, mutable=["batch_moments"])
        moments = dict(new["batch_moments"])
      else:
        logits, moments = model.apply({"params": params}, x, train=True), {}
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y.astype(jnp.int32))
      return loss.mean(), moments  # per example, or per token for the LM

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def train_step(params, batch_stats, opt_state, x, y):
      (loss, moments), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, batch_stats, x, y)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      batch_stats = jax.tree.map(lambda r, m: bn_momentum * r + (1 - bn_momentum) * m,
                                 batch_stats, moments)
      return params, batch_stats, opt_state, loss

    self.train_step = train_step

  def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Examples idx, or for text the windows starting at idx (read circularly)."""
    if not self.seq_len:
      return self.x[idx], self.y[idx]
    seq = self.x[(idx[:, None] + self.window) % len(self.x)]
    return seq[:, :-1], seq[:, 1:]

  def run_epoch(self, plan: np.ndarray) -> float:
    """Train on the batches of plan [steps, k]; blocks at the end, as Flax's examples
    sync once they fetch an epoch's metrics."""
    p, bs, opt_state = self.params, self.batch_stats, self.opt_state
    for idx in plan:
      p, bs, opt_state, loss = self.train_step(p, bs, opt_state, *self.batch(idx))
    self.params, self.batch_stats, self.opt_state = jax.block_until_ready((p, bs, opt_state))
    return float(loss)

  def variables(self) -> dict[str, Any]:
    return dict(params=self.params, batch_stats=self.batch_stats)


@dataclasses.dataclass
class Result:
  """One workload at one k: timed epochs aligned by round, and the warm-up checks."""

  workload: str
  k: int
  steps: int
  times: dict[str, list[float]]  # loop -> seconds of each timed epoch
  warmup_loss: dict[str, float]  # loop -> last training loss of the warm-up epoch
  test_loss: dict[str, float]  # loop -> test loss of its variables after warm-up
  param_diff: float  # max |param difference| after warm-up

  @property
  def examples(self) -> int:
    return self.steps * self.k

  def examples_per_sec(self, name: str) -> tuple[float, float, float]:
    """(median, min, max) examples/s over the timed epochs."""
    t = self.times[name]
    return (self.examples / statistics.median(t), self.examples / max(t),
            self.examples / min(t))

  @property
  def ratio(self) -> float:
    """Median over rounds of sgdlab's throughput over the hand loop's."""
    return statistics.median(h / s for s, h in zip(self.times[SGDLAB], self.times[HAND]))


def build(workload: str, k: int, mesh: Mesh, **kwargs) -> tuple[SgdlabLoop, FlaxLoop]:
  """Both loops of a workload at k, from the same initial state (compiled by sgdlab)."""
  config = workload_config(workload, k, **kwargs)
  run = run_lib.create_run(config_lib.resolve(config, n_devices=mesh.size), mesh=mesh)
  if run.program.steps_per_epoch < 1:
    raise ValueError(f"{workload}: k={k} exceeds the {run.program.first.spec.n_train} "
                     "examples of an epoch; raise --n_train")
  sg = SgdlabLoop(run, run.init_state())
  hand = FlaxLoop(run, sg.state, lr=config.learning_rate,
                  nesterov=config.optimizer.name == "nesterov",
                  bn_momentum=config.model.bn_momentum, device=mesh.devices.flat[0])
  return sg, hand


def max_param_diff(a: Any, b: Any) -> float:
  a, b = jax.device_get(a), jax.device_get(b)
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                          jax.tree.leaves(b)))


def benchmark(workload: str, batch_sizes: list[int], *, epochs: int, mesh: Mesh,
              **kwargs) -> list[Result]:
  """Warm up, then time both loops in alternation, at each k; one Result per k."""
  results = []
  for k in batch_sizes:
    sg, hand = build(workload, k, mesh, **kwargs)
    plan = lambda e: np.asarray(jax.device_get(sg.run.host_order(e)["idx"]))  # noqa: E731
    warm = {SGDLAB: sg.run_epoch(0), HAND: hand.run_epoch(plan(0))}  # compiles the hand step
    test = {}
    for name, loop in ((SGDLAB, sg), (HAND, hand)):
      variables = pipeline.replicate(jax.device_get(loop.variables()), mesh)
      test[name] = float(sg.run.evaluate(variables)["loss"])
    diff = max_param_diff(sg.state.params, hand.params)
    logging.info("%s k=%d: warm-up losses %s, test %s, max |dparam| %.1e", workload, k,
                 warm, test, diff)
    times = {SGDLAB: [], HAND: []}
    for i in range(epochs):
      e = 1 + i
      order = plan(e)  # the hand loop's host plan: fetched before its clock starts
      turns = [(SGDLAB, lambda: sg.run_epoch(e)), (HAND, lambda: hand.run_epoch(order))]
      for name, epoch_fn in turns if i % 2 == 0 else turns[::-1]:
        start = time.perf_counter()
        loss = epoch_fn()
        times[name].append(time.perf_counter() - start)
        if not math.isfinite(loss):
          raise FloatingPointError(f"{workload} k={k}: {name} loss {loss}; lower "
                                   "--learning_rate")
    results.append(Result(workload, k, sg.run.program.steps_per_epoch, times, warm, test,
                          diff))
  return results


def format_table(results: list[Result]) -> str:
  """Markdown: ex/s as median (min-max) over epochs; the ratio's median over rounds."""
  head = ["workload", "k", "steps/epoch", "sgdlab ex/s", "Flax per-step ex/s",
          "sgdlab / Flax", "warm-up loss (sgdlab, Flax)", "test loss (sgdlab, Flax)"]
  rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

  def rate(r: Result, name: str) -> str:
    m = r.examples_per_sec(name)
    return f"{m[0]:,.0f} ({m[1]:,.0f}-{m[2]:,.0f})"

  for r in results:
    cells = [r.workload, str(r.k), str(r.steps), rate(r, SGDLAB), rate(r, HAND),
             f"{r.ratio:.2f}x", f"{r.warmup_loss[SGDLAB]:.4f}, {r.warmup_loss[HAND]:.4f}",
             f"{r.test_loss[SGDLAB]:.4f}, {r.test_loss[HAND]:.4f}"]
    rows.append("| " + " | ".join(cells) + " |")
  return "\n".join(rows)


def main(argv: list[str]) -> None:
  del argv
  mesh = step.make_mesh(jax.devices()[:1])  # one device: the hand loop uses one
  batch_sizes = [int(k) for k in _BATCH_SIZES.value]
  workloads = WORKLOADS if _WORKLOAD.value == "both" else (_WORKLOAD.value,)
  n, results = _N_TRAIN.value, []
  with tempfile.TemporaryDirectory() as tmp:
    for workload in workloads:
      kwargs = dict(n_train=n, lr=_LR.value)
      if workload == "resnet":
        kwargs["conv_impl"] = _CONV_IMPL.value
      else:
        test_fraction = config_lib.default_config().data.test_fraction
        kwargs["corpus_path"] = write_corpus(tmp, corpus_bytes(n, 128, test_fraction))
      results += benchmark(workload, batch_sizes, epochs=_EPOCHS.value, mesh=mesh, **kwargs)
  print(f"one {jax.devices()[0].device_kind} device ({machine_description()}); jax "
        f"{jax.__version__}; {_EPOCHS.value} timed epochs per loop after a warm-up epoch; "
        f"ResNet-8 width 16 (conv_impl {_CONV_IMPL.value}) on synthetic 32x32x3, "
        f"Transformer 2x128 on Python's docs (an example is a window of 128 tokens). "
        f"ex/s: median (min-max) over epochs; sgdlab / Flax: median over rounds of the "
        f"throughput ratio.")
  print(format_table(results))
  for r in results:
    print(f"{r.workload} k={r.k}: max |param difference| after the warm-up epoch "
          f"{r.param_diff:.1e}")


if __name__ == "__main__":
  app.run(main)
