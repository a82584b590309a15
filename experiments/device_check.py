r"""The accelerator check: sgdlab's speed and memory answers on one GPU, in minutes.

  python experiments/device_check.py            # one GPU: about 4-5 minutes
  python experiments/device_check.py --smoke    # the same code paths on CPU, ~40 s

Synthetic data (no files), one device. Prints four tables (sgdlab.studies.device_check):
1. examples/s of sgdlab's training (its Run, as the trainer drives it) and of the
   hand-written JAX loops (one jitted scan per epoch; jit per step) for the MLP
   784-512-512-10 and the Keras MNIST CNN at k = 32, 256, 2048, over a fixed number of
   steps per timed epoch, alternating loops per round (sgdlab.studies.throughput);
2. a population of P=8 runs at k=32 (one vmapped program) against 8 sequential runs;
3. sgdlab's training at dtype float32 against bfloat16, and at micro-batch k/4 (4
   accumulation steps), for both models at k = 256 and 2048 (bf16 is no faster on CPU);
4. compile mode's largest k (the CNN's compiled step against the device's budget)
   against the real boundary: trial children at compile mode's power of two and its
   double (then 4p, 8p or p/2, p/4 if both ran or both failed), two at a time,
   under XLA_PYTHON_CLIENT_MEM_FRACTION (--mem_fraction); at most 5 children.

The GPU machines have jax 0.11, flax, optax, orbax and absl but not ml-collections
(which sgdlab's configs use) nor PyYAML (which it imports). Pure-Python wheels put in
--wheels (default: wheels/ beside experiments/) are imported from there:
  pip download ml-collections pyyaml --no-deps --only-binary=:all: \
      --python-version 3.12 --platform manylinux2014_x86_64 -d wheels
(PyYAML's compiled module does not load from a wheel; its pure-Python one does.) That
is why this file, alone in experiments/, edits sys.path, and parses its few flags with
argparse: the config (`get_config`, variant "smoke") is built once the wheels are on
the path. --smoke is what the tests run.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(variant: str = ""):
  """The check's sizes: "" for a GPU, "smoke" for the same code paths on CPU in seconds."""
  import ml_collections  # pylint: disable=g-import-not-at-top  (from the wheels, maybe)
  c = ml_collections.ConfigDict(dict(
      smoke=False, rounds=3, steps=8,  # timed epochs per loop and k; steps per epoch
      mem_fraction=0.02,  # XLA_PYTHON_CLIENT_MEM_FRACTION of the trial children
      models=(("mlp", dict(hidden=(512, 512))), ("cnn", {})),  # (model, its sizes)
      batch_sizes=(32, 256, 2048),
      population=8,  # P of the population at the smallest k
      # The memory check: the CNN on synthetic images; budget "" = the device's own.
      memory_n_train=16384, memory_input_shape=(), memory_budget="", memory_budget_bytes=0))
  if variant == "smoke":
    c.smoke, c.rounds, c.steps, c.population = True, 2, 2, 2
    c.models = (("mlp", dict(hidden=(32,))), ("cnn", dict(features=(4, 8), dense=16)))
    c.batch_sizes, c.memory_n_train, c.memory_input_shape = (8,), 4096, (16, 16, 1)
    c.memory_budget, c.memory_budget_bytes = "320MiB", 320 << 20
  return c


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, same paths")
  p.add_argument("--wheels", default=os.path.join(HERE, os.pardir, "wheels"))
  p.add_argument("--rounds", type=int, help="timed epochs per loop and k (default 3)")
  p.add_argument("--steps", type=int, help="steps per timed epoch (default 8)")
  p.add_argument("--mem_fraction", type=float, help="of the trial children (default 0.02)")
  return p.parse_args(argv)


def add_wheels(folder: str) -> list[str]:
  """Put every wheel in folder on sys.path (zipimport), before sgdlab is imported."""
  wheels = sorted(glob.glob(os.path.join(folder, "*.whl")))
  sys.path[:0] = wheels
  return [os.path.basename(w) for w in wheels]


def main(argv: list[str]) -> None:
  args = parse_args(argv)
  wheels = add_wheels(args.wheels)
  if args.smoke:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  config = get_config("smoke" if args.smoke else "")
  for field in ("rounds", "steps", "mem_fraction"):
    if getattr(args, field) is not None:  # smoke sizes stay the smaller
      value = getattr(args, field)
      config[field] = min(value, config[field]) if args.smoke else value
  from sgdlab.studies import device_check  # pylint: disable=g-import-not-at-top
  device_check.check(config, wheels)


if __name__ == "__main__":
  main(sys.argv[1:])
