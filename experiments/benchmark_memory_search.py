r"""Compile mode vs trial mode: the same largest power-of-two k, and the time each takes.

  python experiments/benchmark_memory_search.py
  python experiments/benchmark_memory_search.py --config.memory_budget=3GiB --config.model=mlp

The Keras MNIST CNN on the bundled 28x28 digits, one device, a fixed budget (default
1.5 GiB of address space beyond what a fresh process maps after starting jax). Trial
mode is the manual procedure: start at 512, one child process per trial running real
train steps and an evaluation under RLIMIT_AS (a real out-of-memory boundary on CPU),
double while it runs. Compile mode compiles the train step per candidate k and runs
nothing. Prints both answers, both times and their ratio (target: >= 10x), and the
real memory trial mode touched. Several minutes on 2 CPU cores (trial mode runs real
steps of a CNN at k=1024 and beyond). --config=experiments/benchmark_memory_search.py:small:
the MLP under 384 MiB from k=512 (what the tests run). The engine is
sgdlab.studies.memory_search.
"""

from __future__ import annotations

import os

import ml_collections

from sgdlab import cli
from sgdlab.memory import trials
from sgdlab.studies import memory_search


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The comparison's settings; variant "small" for the tests."""
  c = ml_collections.ConfigDict(dict(
      memory_budget="1536MiB",  # per-process budget beyond start-up
      model="cnn",  # or "mlp"
      trial_start=trials.TRIAL_START,  # trial mode's first k
  ))
  if variant == "small":
    c.memory_budget, c.model, c.trial_start = "384MiB", "mlp", 512
  return c


def main(argv: list[str]) -> None:
  del argv
  memory_search.measure(cli.config())


if __name__ == "__main__":
  cli.define_config_flags(os.path.abspath(__file__))
  cli.main(main)
