r"""The accelerator check: sgdlab's speed and memory answers on one GPU, in minutes.

  python experiments/device_check.py            # one GPU: about 4-5 minutes
  python experiments/device_check.py --smoke    # the same code paths on CPU, ~40 s

Synthetic data (no files), one device. Prints four tables:
1. examples/s of sgdlab's training (its Run, as the trainer drives it) and of the
   hand-written JAX loops (one jitted scan per epoch; jit per step) for the MLP
   784-512-512-10 and the Keras MNIST CNN at k = 32, 256, 2048, over a fixed number of
   steps per timed epoch, alternating loops per round (experiments/throughput_loops.py);
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
(PyYAML's compiled module does not load from a wheel; its pure-Python one does.)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, same paths")
  p.add_argument("--wheels", default=os.path.join(HERE, os.pardir, "wheels"))
  p.add_argument("--rounds", type=int, default=3, help="timed epochs per loop and k")
  p.add_argument("--steps", type=int, default=8, help="steps per timed epoch")
  p.add_argument("--mem_fraction", type=float, default=0.02,
                 help="XLA_PYTHON_CLIENT_MEM_FRACTION of the trial children")
  return p.parse_args(argv)


def add_wheels(folder: str) -> list[str]:
  """Put every wheel in folder on sys.path (zipimport), before sgdlab is imported."""
  wheels = sorted(glob.glob(os.path.join(folder, "*.whl")))
  sys.path[:0] = wheels
  return [os.path.basename(w) for w in wheels]


def synthetic(n_train: int, shape=(28, 28, 1), num_classes: int = 10, seed: int = 0):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sgdlab import data  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=(n_train + 256, *shape)).astype(np.float32)
  y = rng.integers(0, num_classes, n_train + 256).astype(np.int32)
  return data.Dataset("synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                      num_classes)


def throughput(args, mesh, models, batch_sizes) -> None:
  """The throughput benchmark's own alternating rounds (benchmark_throughput.benchmark),
  on synthetic data tiled to args.steps full batches at each k."""
  import benchmark_throughput as bt  # pylint: disable=g-import-not-at-top
  print("| model | k | sgdlab ex/s | JAX scan ex/s | JAX per-step ex/s | sgdlab / best |")
  print("|---|---:|---:|---:|---:|---:|")
  for model, sizes in models.items():
    results = bt.benchmark(synthetic(args.steps * max(batch_sizes)), batch_sizes, epochs=1,
                           repeats=args.rounds, mesh=mesh, model=model, lr=0.01,
                           with_torch=False, cnn_steps=args.steps, **sizes)
    for r in results:
      rate = {n: r.examples_per_sec(n)[0] for n in r.epoch_times}
      print(f"| {model} | {r.k} | {rate[bt.SGDLAB]:,.0f} | {rate[bt.JAX_LOOP]:,.0f} | "
            f"{rate[bt.JAX_STEP]:,.0f} | {r.ratio(bt.SGDLAB)[0]:.2f}x |", flush=True)


def epoch_seconds(run, rounds: int) -> float:
  """Median seconds of an epoch of a Run's advance program, after a warm-up epoch."""
  import jax  # pylint: disable=g-import-not-at-top
  state, times = run.init_state(), []
  for e in range(1 + rounds):
    start = time.perf_counter()
    state, metrics = run.advance(state, run.order(e))
    jax.block_until_ready(metrics)
    if e:
      times.append(time.perf_counter() - start)
  return statistics.median(times)


def precision(args, mesh, models, batch_sizes) -> None:
  """sgdlab's training at config.dtype float32 against bfloat16 (bf16 matmuls and
  convolutions, float32 parameters), and at 4 accumulation steps (micro-batch k/4)."""
  import throughput_loops as tl  # pylint: disable=g-import-not-at-top
  from sgdlab import config as config_lib  # pylint: disable=g-import-not-at-top
  from sgdlab.train import run as run_lib  # pylint: disable=g-import-not-at-top
  print("| model | k | float32 ex/s | bfloat16 ex/s | bf16 / fp32 | fp32, 4 x k/4 ex/s |")
  print("|---|---:|---:|---:|---:|---:|")
  for model, sizes in models.items():
    for k in batch_sizes:
      ds = synthetic(args.steps * k)
      rate = {}
      for name, fields in (("fp32", {}), ("bf16", dict(dtype="bfloat16")),
                           ("acc", dict(microbatch_size=max(k // 4, 1)))):
        config = tl.bench_config(model, k, 0.01, 1e-3, 0, **sizes)
        for key, value in fields.items():
          config[key] = value
        run = run_lib.create_run(config_lib.resolve(config, n_devices=1, spec=ds.spec()),
                                 ds, mesh)
        rate[name] = ds.n_train / epoch_seconds(run, args.rounds)
      print(f"| {model} | {k} | {rate['fp32']:,.0f} | {rate['bf16']:,.0f} | "
            f"{rate['bf16'] / rate['fp32']:.2f}x | {rate['acc']:,.0f} |", flush=True)


def population(args, mesh, k: int, size: int, hidden) -> None:
  import throughput_loops as tl  # pylint: disable=g-import-not-at-top
  from sgdlab import config as config_lib  # pylint: disable=g-import-not-at-top
  from sgdlab.train import run as run_lib  # pylint: disable=g-import-not-at-top
  ds = synthetic(args.steps * k)
  members = [config_lib.resolve(tl.bench_config("mlp", k, 0.1 / (i + 1), 1e-3, i, hidden),
                                n_devices=1, spec=ds.spec()) for i in range(size)]
  one = epoch_seconds(run_lib.create_run(members[0], ds, mesh), args.rounds)
  pop = epoch_seconds(run_lib.create_run(members, ds, mesh), args.rounds)
  print(f"population P={size}, k={k}, MLP: {size * ds.n_train / pop:,.0f} member-ex/s "
        f"against {ds.n_train / one:,.0f} ex/s for one run: {size * one / pop:.2f}x the "
        f"speed of {size} sequential runs", flush=True)


def memory(args, mesh, config, budget_text: str, budget_bytes: int | None) -> None:
  """Compile mode's answer, then the trainer for real at p and 2p in fresh children."""
  from sgdlab.memory import budget as budget_lib  # pylint: disable=g-import-not-at-top
  from sgdlab.memory import search, trials  # pylint: disable=g-import-not-at-top
  if not args.smoke:
    os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = str(args.mem_fraction)
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    budget_text = str(_child_budget())
  report = search.find_batch_size(config, budget_lib.device_budget(mesh, budget_text),
                                  mesh=mesh)
  p = report.largest_power_of_two
  print(f"compile mode: budget {report.budget.usable / 2**20:,.0f} MiB usable; largest "
        f"power of two k={p}, exact largest k={report.largest_k}", flush=True)
  results = {}
  run = lambda k: trials.run_trial(config, k, budget_bytes=budget_bytes, steps=1, timeout=300)
  pairs = [(p, 2 * p)]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two children at a time
    while pairs:  # at most two pairs: p, 2p and then 4p, 8p or p/2, p/4
      ks = [k for k in pairs.pop() if 1 <= k <= config.data.synthetic_n_train]
      for k, t in zip(ks, pool.map(run, ks)):
        results[k] = t
        print(f"  real trial at k={k}: {'ran' if t.ok else 'OOM' if t.oom else 'error'} "
              f"({t.seconds:.1f}s) {t.error[:120]}", flush=True)
      if len(results) <= 2 and ks:
        if all(results[k].ok for k in ks):
          pairs.append((4 * p, 8 * p))
        elif not any(results[k].ok for k in ks):
          pairs.append((p // 2, p // 4))
  ran = [q for q, r in results.items() if r.ok]
  real = max(ran) if ran else None
  verdict = "agree" if real == p else "differ"
  print(f"compile mode k={p}, real boundary k={real}: {verdict}", flush=True)


_BUDGET_CHILD = ("import jax, sys; s = jax.devices()[0].memory_stats() or {}; "
                 "print('LIMIT', s.get('bytes_limit', 0))")


def _child_budget() -> int:
  """bytes_limit in a child under the trial children's memory fraction: the budget
  compile mode plans for is the one the trial children run under."""
  import subprocess  # pylint: disable=g-import-not-at-top
  out = subprocess.run([sys.executable, "-c", _BUDGET_CHILD], capture_output=True,
                       text=True, env=dict(os.environ), check=True).stdout
  return int(next(l.split()[1] for l in out.splitlines() if l.startswith("LIMIT")))


def main(argv: list[str]) -> None:
  args = parse_args(argv)
  wheels = add_wheels(args.wheels)
  sys.path.insert(0, HERE)
  if args.smoke:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    args.rounds, args.steps = min(args.rounds, 2), min(args.steps, 2)
  import jax  # pylint: disable=g-import-not-at-top
  from sgdlab.train import step  # pylint: disable=g-import-not-at-top
  import throughput_loops as tl  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  mesh = step.make_mesh(jax.devices()[:1])
  print(f"device check: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax "
        f"{jax.__version__}{'; wheels: ' + ', '.join(wheels) if wheels else ''}"
        f"{'; SMOKE sizes' if args.smoke else ''}", flush=True)
  if args.smoke:
    models = {"mlp": dict(hidden=(32,)), "cnn": dict(features=(4, 8), dense=16)}
    batch_sizes, pop_size, hidden = [8], 2, (32,)
  else:
    models = {"mlp": dict(hidden=tl.HIDDEN), "cnn": {}}
    batch_sizes, pop_size, hidden = [32, 256, 2048], 8, tl.HIDDEN
  throughput(args, mesh, models, batch_sizes)
  population(args, mesh, batch_sizes[0], pop_size, hidden)
  precision(args, mesh, models, batch_sizes[1:] or batch_sizes)
  config = tl.bench_config("cnn", 32, 0.01, 1e-3, 0, **models["cnn"])
  config.data.name, config.data.synthetic_n_train, config.data.synthetic_n_test = (
      "synthetic", 16384, 256)
  if args.smoke:
    config.data.synthetic_n_train, config.data.synthetic_input_shape = 4096, (16, 16, 1)
    memory(args, mesh, config, "320MiB", 320 << 20)
  else:
    memory(args, mesh, config, "", None)
  print(f"device check done in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
  main(sys.argv[1:])
