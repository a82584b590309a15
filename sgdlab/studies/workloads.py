"""Throughput of sgdlab's training against a hand-written Flax loop, for ResNet-8 with
batch norm and the byte-level Transformer language model.

sgdlab's side is its Run, whole epochs as the loop drives it (`bench.RunEpochs`: the
whole epoch one compiled scan over batches gathered on device); the other is
`baselines.FlaxLoop`, the same flax module stepped once per batch from Python on
batches cut on the host. Both start from sgdlab's initial parameters and running
averages and read the same batches; they agree closely but not bitwise (sgdlab's loss
is a masked sum divided by the count where optax's is a mean; one scan over the epoch
is fused differently from a step compiled on its own). The update is the same
(optax.trace then -lr, as optax.sgd does; `sgdlab.optim.optimizer`).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import tempfile
from typing import Any

import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from sgdlab import config as config_lib
from sgdlab.data import pipeline
from sgdlab.studies import baselines, bench, corpus
from sgdlab.studies.baselines import FLAX_STEP as HAND
from sgdlab.studies.bench import SGDLAB
from sgdlab.train import step

WORKLOADS = ("resnet", "transformer")
LEARNING_RATES = {"resnet": 0.05, "transformer": 0.1}


def corpus_bytes(n_windows: int, seq_len: int, test_fraction: float) -> int:
  """File bytes whose training part holds n_windows windows of seq_len tokens (a few
  more for a character cut at the end)."""
  return math.ceil((n_windows * seq_len + 1) / (1.0 - test_fraction)) + 4


def workload_config(workload: str, k: int, *, n_train: int, lr: float = 0.0,
                    corpus_path: str = "", width: int = 0, depth: int = 0, heads: int = 4,
                    side: int = 32, seq_len: int = 128, n_test: int = 256,
                    conv_impl: str = "auto") -> ml_collections.ConfigDict:
  """The sgdlab config of a workload at batch size k; sizes 0 take the defaults."""
  c = config_lib.default_config()
  c.batch_size, c.seed, c.num_epochs = k, 0, 1
  c.learning_rate, c.lr_decay = lr or LEARNING_RATES[workload], 0.0
  c.schedule.name, c.drop_remainder, c.optimizer.momentum = "constant", True, 0.9
  if workload == "resnet":
    c.model.name, c.model.resnet_depth, c.model.resnet_width = "resnet", 8, width or 16
    c.model.conv_impl, c.optimizer.name = conv_impl, "nesterov"
    c.data.name, c.data.synthetic_input_shape = "synthetic", (side, side, 3)
    c.data.synthetic_n_train, c.data.synthetic_n_test = n_train, n_test
  elif workload == "transformer":
    c.model.name, c.model.transformer_width = "transformer", width or 128
    c.model.transformer_depth = depth or 2
    c.model.heads, c.optimizer.name = heads, "momentum"
    c.data.name, c.data.seq_len, c.data.path = "text", seq_len, corpus_path
  else:
    raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")
  return c


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
    return bench.Timings(wall=self.times).rate(name, self.examples)

  @property
  def ratio(self) -> float:
    """Median over rounds of sgdlab's throughput over the hand loop's."""
    return statistics.median(h / s for s, h in zip(self.times[SGDLAB], self.times[HAND]))


def build(workload: str, k: int, mesh: Mesh,
          **kwargs: Any) -> tuple[bench.RunEpochs, baselines.FlaxLoop]:
  """Both loops of a workload at k, from the same initial state (compiled by sgdlab)."""
  config = workload_config(workload, k, **kwargs)
  sg = bench.RunEpochs(bench.create(config, None, mesh))
  if sg.run.program.steps_per_epoch < 1:
    raise ValueError(f"{workload}: k={k} exceeds the {sg.run.program.first.spec.n_train} "
                     "examples of an epoch; raise n_train")
  hand = baselines.FlaxLoop(sg.run, sg.state, lr=config.learning_rate,
                            nesterov=config.optimizer.name == "nesterov",
                            bn_momentum=config.model.bn_momentum, device=mesh.devices.flat[0])
  return sg, hand


def _check(workload: str, k: int, timed: dict[str, Any]) -> None:
  for name, loss in timed.items():
    if not math.isfinite(loss):
      raise FloatingPointError(f"{workload} k={k}: {name} loss {loss}; lower the "
                               "learning rate")


def benchmark(workload: str, batch_sizes: list[int], *, epochs: int, mesh: Mesh,
              **kwargs: Any) -> list[Result]:
  """Warm up, then time both loops in alternation, at each k; one Result per k."""
  results = []
  for k in batch_sizes:
    sg, hand = build(workload, k, mesh, **kwargs)
    hand.prepare(0)
    warm = {SGDLAB: sg.run_epoch(0), HAND: hand.run_epoch(0)}  # compiles the hand step
    test = {}
    for name, variables in ((SGDLAB, step.eval_variables(sg.state)),
                            (HAND, hand.variables())):
      placed = pipeline.replicate(jax.device_get(variables), mesh)
      test[name] = float(sg.run.evaluate(placed)["loss"])
    diff = bench.max_param_diff(sg.state.params, hand.params)
    logging.info("%s k=%d: warm-up losses %s, test %s, max |dparam| %.1e", workload, k,
                 warm, test, diff)
    loops = {SGDLAB: sg, HAND: hand}
    timings = bench.alternate(loops, epochs, order="swap")
    _check(workload, k, {SGDLAB: float(sg.metrics["loss"][-1]), HAND: hand.last_loss})
    results.append(Result(workload, k, sg.run.program.steps_per_epoch, timings.wall, warm,
                          test, diff))
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


def measure(config: ml_collections.ConfigDict) -> list[Result]:
  """The benchmark a config describes (experiments/benchmark_workloads.py), printed."""
  c = config
  mesh = step.make_mesh(jax.devices()[:1])  # one device: the hand loop uses one
  workloads = WORKLOADS if c.workload == "both" else (c.workload,)
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for workload in workloads:
      kwargs = dict(n_train=c.n_train, lr=c.learning_rate, **c.sizes[workload])
      if workload == "resnet":
        kwargs["conv_impl"] = c.conv_impl
      else:
        seq_len = kwargs.get("seq_len", 128)
        test_fraction = config_lib.default_config().data.test_fraction
        kwargs["corpus_path"] = corpus.write_python_docs(
            tmp, corpus_bytes(c.n_train, seq_len, test_fraction))
      results += benchmark(workload, list(c.batch_sizes), epochs=c.epochs, mesh=mesh,
                           **kwargs)
  print(f"one {jax.devices()[0].device_kind} device ({bench.machine_description()}); jax "
        f"{jax.__version__}; {c.epochs} timed epochs per loop after a warm-up epoch; "
        f"ResNet-8 width 16 (conv_impl {c.conv_impl}) on synthetic 32x32x3, "
        f"Transformer 2x128 on Python's docs (an example is a window of 128 tokens). "
        f"ex/s: median (min-max) over epochs; sgdlab / Flax: median over rounds of the "
        f"throughput ratio.")
  print(format_table(results))
  for r in results:
    print(f"{r.workload} k={r.k}: max |param difference| after the warm-up epoch "
          f"{r.param_diff:.1e}")
  return results
