r"""Throughput of sgdlab's training against a hand-written Flax loop, for ResNet-8 with
batch norm and the byte-level Transformer language model.

  python experiments/benchmark_workloads.py [--config.workload=resnet|transformer|both]
      [--config.batch_sizes="(32, 128)"] [--config.epochs=3] [--config.n_train=2048]
      [--config.conv_impl=auto]

Workloads (one device, float32, a constant learning rate, every batch full):
* resnet: ResNet-8 of width 16 (batch norm per batch, model.conv_impl="auto": sgdlab's
  matmul-form convolution gradients on CPU, XLA's (cuDNN's) on a GPU) on n_train synthetic 32x32x3 images,
  Nesterov momentum 0.9, lr 0.05.
* transformer: 2 blocks of width 128, 4 heads, context 128, heavy-ball momentum 0.9,
  lr 0.1, on Python's own documentation (`pydoc_data.topics`, written to a temporary
  file) cut to n_train windows per epoch. An example is a window of 128 tokens.

The loops:
* sgdlab: the Run the trainer builds, whole epochs as `sgdlab.train.loop` drives it
  (sgdlab.studies.bench: the whole epoch one compiled scan over batches gathered on
  device).
* Flax (sgdlab.studies.baselines.FlaxLoop): the pattern of Flax's examples: the same flax module (`run.program.model`), a
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
for a Transformer. Both loops run the same module, so conv_impl sets the convolution
forms for both; with conv_impl=xla on XLA:CPU the scan is the slow side: XLA's own
convolution gradients run many times slower inside a `lax.scan` body
(sgdlab/models/conv.py; measured 6 against 163 ex/s at k=64).

Cost: each k runs 2 x (1 + epochs) epochs of n_train examples, plus compilation.
On 2 CPU cores: the ResNet ~200 ex/s in both loops (about a minute per k at
--n_train=2048), the Transformer ~50 ex/s (about 12 minutes per k at the defaults; use
a smaller n_train). On an accelerator mostly compilation (not measured yet).
--config=experiments/benchmark_workloads.py:small: both workloads at tiny sizes (about
90 s, mostly compiling; what the slow tests run). The engine is sgdlab.studies.workloads.
"""

from __future__ import annotations

import os

import ml_collections

from sgdlab import cli
from sgdlab.studies import workloads


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The benchmark's settings; variant "small" for the tests."""
  c = ml_collections.ConfigDict(dict(
      workload="both",  # resnet, transformer or both
      batch_sizes=(32, 128),
      epochs=3,  # timed epochs per loop and k
      # Examples per epoch: synthetic images, or windows of the corpus (at most what the
      # corpus holds).
      n_train=2048,
      learning_rate=0.0,  # 0: 0.05 for the ResNet, 0.1 for the LM
      conv_impl="auto",  # ResNet: model.conv_impl, for both loops (xla, im2col, auto)
      # workload_config's sizes per workload (0 or absent: the defaults above).
      sizes=dict(resnet={}, transformer={}),
  ))
  if variant == "small":
    c.n_train, c.batch_sizes, c.epochs = 32, (8,), 1
    c.sizes = dict(resnet=dict(width=4, side=8, n_test=32),
                   transformer=dict(width=16, depth=1, heads=2, seq_len=16))
  return c


def main(argv: list[str]) -> None:
  del argv
  workloads.measure(cli.config())


if __name__ == "__main__":
  cli.define_config_flags(os.path.abspath(__file__))
  cli.main(main)
