"""The accelerator check: sgdlab's speed and memory answers on one device, in minutes.

Synthetic data (no files), one device; four tables:
1. examples/s of sgdlab's training and of the hand-written JAX loops for the MLP and
   the Keras MNIST CNN, over a fixed number of steps per timed epoch, alternating
   loops per round (`sgdlab.studies.throughput`);
2. a population of P runs (one vmapped program) against P sequential runs;
3. training at dtype float32 against bfloat16, and at micro-batch k/4 (4 accumulation
   steps);
4. compile mode's largest k (the CNN's compiled step against the device's budget)
   against the real boundary: trial children at compile mode's power of two and its
   double (then 4p, 8p or p/2, p/4 if both ran or both failed), two at a time, under
   XLA_PYTHON_CLIENT_MEM_FRACTION (mem_fraction); at most 5 children.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time
from typing import Any

import jax
import ml_collections

from sgdlab.memory import budget as budget_lib, search, trials
from sgdlab.studies import baselines, bench, throughput
from sgdlab.train import step


def speed(config: ml_collections.ConfigDict, mesh: Any) -> None:
  """The throughput benchmark's alternating rounds on synthetic data tiled to
  config.steps full batches at each k."""
  print("| model | k | sgdlab ex/s | JAX scan ex/s | JAX per-step ex/s | sgdlab / best |")
  print("|---|---:|---:|---:|---:|---:|")
  ks = list(config.batch_sizes)
  for model, sizes in config.models:
    results = throughput.benchmark(bench.synthetic(config.steps * max(ks)), ks, epochs=1,
                                   repeats=config.rounds, mesh=mesh, model=model, lr=0.01,
                                   with_torch=False, cnn_steps=config.steps, **sizes)
    for r in results:
      rate = {n: r.examples_per_sec(n)[0] for n in r.epoch_times}
      print(f"| {model} | {r.k} | {rate[bench.SGDLAB]:,.0f} | "
            f"{rate[baselines.JAX_LOOP]:,.0f} | {rate[baselines.JAX_STEP]:,.0f} | "
            f"{r.ratio(bench.SGDLAB)[0]:.2f}x |", flush=True)


def precision(config: ml_collections.ConfigDict, mesh: Any) -> None:
  """Training at config.dtype float32 against bfloat16 (bf16 matmuls and convolutions,
  float32 parameters), and at 4 accumulation steps (micro-batch k/4)."""
  print("| model | k | float32 ex/s | bfloat16 ex/s | bf16 / fp32 | fp32, 4 x k/4 ex/s |")
  print("|---|---:|---:|---:|---:|---:|")
  ks = list(config.batch_sizes)[1:] or list(config.batch_sizes)
  for model, sizes in config.models:
    for k in ks:
      ds = bench.synthetic(config.steps * k)
      rate = {}
      for name, fields in (("fp32", {}), ("bf16", dict(dtype="bfloat16")),
                           ("acc", dict(microbatch_size=max(k // 4, 1)))):
        c = bench.bench_config(model, k, 0.01, 1e-3, 0, **sizes)
        for key, value in fields.items():
          c[key] = value
        rate[name] = ds.n_train / bench.epoch_seconds(bench.create(c, ds, mesh),
                                                      config.rounds)
      print(f"| {model} | {k} | {rate['fp32']:,.0f} | {rate['bf16']:,.0f} | "
            f"{rate['bf16'] / rate['fp32']:.2f}x | {rate['acc']:,.0f} |", flush=True)


def population(config: ml_collections.ConfigDict, mesh: Any) -> None:
  """P members at the smallest k (lr 0.1 / (i + 1), seed i) against one run."""
  k, size = min(config.batch_sizes), config.population
  hidden = dict(config.models)["mlp"]["hidden"]
  ds = bench.synthetic(config.steps * k)
  members = [bench.bench_config("mlp", k, 0.1 / (i + 1), 1e-3, i, hidden)
             for i in range(size)]
  one = bench.epoch_seconds(bench.create(members[0], ds, mesh), config.rounds)
  pop = bench.epoch_seconds(bench.create(members, ds, mesh), config.rounds)
  print(f"population P={size}, k={k}, MLP: {size * ds.n_train / pop:,.0f} member-ex/s "
        f"against {ds.n_train / one:,.0f} ex/s for one run: {size * one / pop:.2f}x the "
        f"speed of {size} sequential runs", flush=True)


def _memory_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  c = bench.bench_config("cnn", 32, 0.01, 1e-3, 0, **dict(config.models)["cnn"])
  c.data.name, c.data.synthetic_n_train, c.data.synthetic_n_test = (
      "synthetic", config.memory_n_train, 256)
  if config.memory_input_shape:
    c.data.synthetic_input_shape = tuple(config.memory_input_shape)
  return c


def memory(config: ml_collections.ConfigDict, mesh: Any) -> None:
  """Compile mode's answer, then the trainer for real at p and 2p in fresh children."""
  c = _memory_config(config)
  budget_text, budget_bytes = config.memory_budget, config.memory_budget_bytes or None
  if not config.smoke:
    os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = str(config.mem_fraction)
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    budget_text = str(_child_budget())
  report = search.find_batch_size(c, budget_lib.device_budget(mesh, budget_text), mesh=mesh)
  p = report.largest_power_of_two
  print(f"compile mode: budget {report.budget.usable / 2**20:,.0f} MiB usable; largest "
        f"power of two k={p}, exact largest k={report.largest_k}", flush=True)
  results = {}
  run = lambda k: trials.run_trial(c, k, budget_bytes=budget_bytes, steps=1, timeout=300)
  pairs = [(p, 2 * p)]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two children at a time
    while pairs:  # at most two pairs: p, 2p and then 4p, 8p or p/2, p/4
      ks = [k for k in pairs.pop() if 1 <= k <= c.data.synthetic_n_train]
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
  out = subprocess.run([sys.executable, "-c", _BUDGET_CHILD], capture_output=True,
                       text=True, env=dict(os.environ), check=True).stdout
  return int(next(l.split()[1] for l in out.splitlines() if l.startswith("LIMIT")))


def check(config: ml_collections.ConfigDict, wheels: list[str] = ()) -> None:
  """The four tables, on the first device."""
  start = time.perf_counter()
  mesh = step.make_mesh(jax.devices()[:1])
  print(f"device check: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax "
        f"{jax.__version__}{'; wheels: ' + ', '.join(wheels) if wheels else ''}"
        f"{'; SMOKE sizes' if config.smoke else ''}", flush=True)
  speed(config, mesh)
  population(config, mesh)
  precision(config, mesh)
  memory(config, mesh)
  print(f"device check done in {time.perf_counter() - start:.0f}s")
