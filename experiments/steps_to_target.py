r"""Steps to a target versus batch size k, with the gradient noise scale beside it.

  python experiments/steps_to_target.py --workdir=runs/steps_to_target

For k = 1, 2, 4, ... and the whole training set, SGD with a constant lr trains the MLP
784-512-512-10 on the 4,000 bundled MNIST training digits until the test accuracy
first reaches 0.9 (checked after steps 1..20, then every ~5% more steps). The lr is
tuned per k on a grid of factor sqrt(2): starting from the best lr of the previous k,
the grid grows up or down until the best lr has a worse (or diverging) neighbour on
both sides; a run stops as soon as it needs more steps than the best so far at its k.
Each step sees k fresh examples (full batches only, a new permutation per epoch).

It shows the regimes of Shallue et al. (2018), perfect scaling (doubling k halves the
steps), diminishing returns and no gain at all, as this data and model give them, and
fits McCandlish et al.'s S = S_min (1 + B_noise / k) to the measured points. Next to
the fitted B_noise it measures the simple noise scale B_simple = tr(Sigma) / |G|^2:
online during an ordinary training run at k = 256 (config.noise_scale=True with
noise_groups=16: small batches of 16; the tuned lr, 4x its steps to target), with the
trainer's probe at each epoch's end (config.noise_probe_batches=15: 15 extra batches at
that epoch's parameters), and at checkpoints of that run both exactly
(per-example gradients over all 4,000 digits) and by the online estimator averaged
over 400 batches at the checkpoint's parameters.

Writes to the workdir: results.json (every run), table.md, steps_to_target.png,
noise_scale.png (the noise run: experiments/noise_checkpoints.py). Deterministic: a
rerun on the same machine and versions gives the same table. Measured on 2 AMD EPYC
cores: about 8 minutes wall (the noise run, with its probe, 2 of them). Larger settings:
  --config.data.dir=/path/to/idx  full MNIST (60k): raise steps_to_target.max_examples
  --config.steps_to_target.target=0.95, or .metric=train_loss --config.steps_to_target.target=0.1
  --config.steps_to_target.batch_sizes="(8, 64, 512)"  a subset of k only
  --config.optimizer.name=momentum, --config.schedule.name=cosine (decay length from
    num_epochs), --config.model.hidden="(128,)" work as in sgdlab.launch configs.

Past the device's memory: --config=experiments/steps_to_target.py:cnn is Keras' CNN
(dropout off) at k = 64, 512, 4000 under memory_budget=1GiB, where one step at k=4000
needs 5.6 GiB: microbatch_size="auto" keeps every k and accumulates where it must
(the table's micro-batch column). With --config.memory_budget= --config.microbatch_size=0
the same runs go without accumulation (a machine with the memory): the steps to target
agree within float summation noise. About 13 CPU-minutes each (25 minutes wall when
the two ran side by side on 2 cores); no noise run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags, logging

from sgdlab import cli
from sgdlab import config as config_lib
from sgdlab import data, noise
from sgdlab.errors import ConfigError
from sgdlab.memory import auto
from sgdlab.train import loop
from sgdlab.train import run as run_lib
from sgdlab.train import step

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=g-import-not-at-top,wrong-import-position
from noise_checkpoints import noise_run, noise_table

METRICS = ("test_accuracy", "train_loss", "validation_accuracy", "validation_loss",
           "validation_bits_per_byte")


# The test figure reported beside each tuned metric.
TEST_OF = {"test_accuracy": "test_accuracy", "train_loss": "test_loss",
           "validation_accuracy": "test_accuracy", "validation_loss": "test_loss",
           "validation_bits_per_byte": "test_bits_per_byte"}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The defaults the module docstring describes; override with --config.field=value.

  variant "small": tiny synthetic data, three k, a low target: every code path in
  seconds (what the tests run): --config=experiments/steps_to_target.py:small
  """
  c = config_lib.default_config()
  c.model.name, c.model.hidden, c.model.dropout = "mlp", (512, 512), 0.0
  c.optimizer.name = "sgd"
  c.schedule.name = "constant"
  c.lr_decay = 0.0
  c.learning_rate = 0.01  # the first lr tried at the smallest k
  c.num_epochs = 100  # only read by schedules that need a length (cosine)
  # The noise run's small batches: 16 of k/16, not two halves (noise_checkpoints.py).
  c.noise_groups = 16
  c.steps_to_target = ml_collections.ConfigDict(dict(
      batch_sizes=(),  # () = 1, 2, 4, ... below the training set size, and the set size
      metric="test_accuracy",  # test_accuracy (reach >= target) or train_loss (<= target)
      target=0.9,
      lr_factor=2 ** 0.5,  # grid spacing
      max_lrs=6,  # runs per k at most
      max_steps=30_000,  # per run
      max_examples=3_000_000,  # per run; with max_steps, the budget for one (k, lr)
      eval_growth=1.05,  # check the metric when the step count has grown by this factor
      noise_batch_size=256,  # k of the online noise-scale run (B_small = k / noise_groups)
      noise_length=4.0,  # that run's length, in multiples of its k's steps to target
      noise_checkpoints=4,  # checkpoints of that run with exact and fixed-params B_simple
      noise_fixed_batches=400,  # batches averaged at each checkpoint
      # The noise run's config.noise_probe_batches: B_simple in training at each epoch's
      # end from this many extra batches at its parameters (0: none). 15 = every full
      # batch of 256 in the 4,000 digits: near exact, for ~2x that run's gradients.
      noise_probe_batches=15,
      seeds=(0,),  # each (k, lr) runs every seed; its steps are their mean
  ))
  if variant == "cnn":
    c.model.name, c.model.conv_dropout, c.model.dense_dropout = "cnn", 0.0, 0.0
    c.memory_budget, c.microbatch_size = "1GiB", "auto"
    c.eval_batch_size = 100  # evaluation is not planned: keep it small
    c.learning_rate = 0.05
    s = c.steps_to_target
    s.batch_sizes, s.max_lrs, s.noise_batch_size = (64, 512, 4000), 4, 0
  if variant == "small":
    c.data.name = "synthetic"
    c.data.synthetic_n_train, c.data.synthetic_n_test = 256, 128
    c.data.synthetic_input_shape = (6, 6, 1)
    c.model.hidden = (32,)
    c.learning_rate = 0.1
    s = c.steps_to_target
    s.batch_sizes, s.target, s.max_lrs, s.max_steps = (16, 64), 0.3, 2, 300
    s.noise_batch_size, s.noise_fixed_batches, s.noise_checkpoints = 32, 5, 2
    s.noise_probe_batches = 4
    c.noise_groups = 4  # still more than two halves, at a fraction of 16's cost
    s.noise_length = 2.0
  return c


# ------------------------------------------------------------------- validation


def batch_sizes(config: ml_collections.ConfigDict, n_train: int) -> list[int]:
  ks = tuple(config.steps_to_target.batch_sizes)
  if not ks:
    ks = [2 ** i for i in range(int(math.log2(n_train)) + 1) if 2 ** i < n_train] + [n_train]
  return sorted({int(k) for k in ks})


def validate(config: ml_collections.ConfigDict, n_train: int | None = None) -> None:
  """ConfigError for anything that cannot run, before any compile."""
  config_lib.resolve(config, n_devices=1)
  s = config.steps_to_target
  if s.metric not in METRICS:
    raise ConfigError("steps_to_target.metric", s.metric, f"one of {list(METRICS)}")
  if not (isinstance(s.target, (int, float)) and math.isfinite(s.target)):
    raise ConfigError("steps_to_target.target", s.target, "a finite number")
  if not s.seeds or any(not isinstance(x, int) or x < 0 for x in s.seeds):
    raise ConfigError("steps_to_target.seeds", tuple(s.seeds), "integers >= 0, at least one")
  if s.metric.endswith("accuracy") and not 0 < s.target <= 1:
    raise ConfigError("steps_to_target.target", s.target, "an accuracy in (0, 1]")
  if s.noise_length <= 0:
    raise ConfigError("steps_to_target.noise_length", s.noise_length, "a number > 0")
  if s.lr_factor <= 1:
    raise ConfigError("steps_to_target.lr_factor", s.lr_factor, "a number > 1")
  if s.eval_growth <= 1:
    raise ConfigError("steps_to_target.eval_growth", s.eval_growth, "a number > 1")
  for field in ("max_lrs", "max_steps", "max_examples", "noise_fixed_batches"):
    if int(s[field]) < 1:
      raise ConfigError(f"steps_to_target.{field}", s[field], "an integer >= 1")
  if not isinstance(s.noise_probe_batches, int) or s.noise_probe_batches < 0:
    raise ConfigError("steps_to_target.noise_probe_batches", s.noise_probe_batches,
                      "an integer >= 0 (0: no probe)")
  split = config_lib.noise_groups_for(config.noise_groups, 1, False)  # the noise run: one device
  if s.noise_batch_size < 0 or s.noise_batch_size % split:
    raise ConfigError("steps_to_target.noise_batch_size", s.noise_batch_size,
                      f"a multiple of {split} (one device splits the batch into "
                      f"noise_groups={split} parts), or 0: no noise run")
  if n_train is not None:
    bad = [k for k in batch_sizes(config, n_train) if not 1 <= k <= n_train]
    if bad:
      raise ConfigError("steps_to_target.batch_sizes", tuple(s.batch_sizes),
                        f"sizes in [1, {n_train}] (the training set)")
    if s.noise_batch_size > n_train:
      raise ConfigError("steps_to_target.noise_batch_size", s.noise_batch_size,
                        f"at most the training set size {n_train}")
    if s.noise_batch_size and s.noise_probe_batches > n_train // s.noise_batch_size:
      raise ConfigError("steps_to_target.noise_probe_batches", s.noise_probe_batches,
                        f"at most the {n_train // s.noise_batch_size} full batches of "
                        f"noise_batch_size={s.noise_batch_size} in the {n_train} examples")


# ------------------------------------------------------------------ steps to target


def eval_schedule(limit: int, growth: float) -> list[int]:
  """Steps after which the target metric is checked: 1, 2, ..., then growing by `growth`."""
  steps, t = [], 1
  while t <= limit:
    steps.append(t)
    t = max(t + 1, math.ceil(t * growth))
  return steps


def make_runner(config: ml_collections.ConfigDict, dataset: data.Dataset, mesh, k: int):
  """`run_lr(learning_rate, limit) -> result` for one k, through sgdlab's Run and loop.

  One Run per k (compiled once: lr lives in the state), full batches only
  (drop_remainder), the metric checked at `eval_schedule` until the target, the limit
  or divergence.
  """
  s = config.steps_to_target
  c = config.copy_and_resolve_references()
  c.batch_size, c.drop_remainder = k, True
  per_epoch = dataset.n_train // k
  budget = int(min(s.max_steps, max(1, s.max_examples // k)))
  c.num_epochs = max(int(c.num_epochs), math.ceil(budget / per_epoch))
  resolved = config_lib.resolve(c, n_devices=mesh.size, spec=dataset.spec())
  resolved = auto.resolve_plan(resolved, mesh)  # microbatch_size="auto": keeps k
  base = run_lib.create_run(resolved, dataset, mesh)
  target = loop.Target(s.metric, float(s.target))

  def run_lr(learning_rate: float, limit: int) -> dict[str, Any]:
    """Every seed; the steps are their mean, reached only if every seed reached."""
    start, reached, tests, status = time.perf_counter(), [], [], "reached"
    for seed in s.seeds:
      run = base.for_members([resolved.with_fields(learning_rate=float(learning_rate),
                                                   seed=int(seed))])
      (h,) = loop.run_loop(run, eval_steps=eval_schedule(limit, s.eval_growth),
                           target=target, max_steps=limit)
      if h.reached is None:
        last = h.evals.get(s.metric, [math.nan])[-1]
        status = (h.diverged.split(" (")[0] if h.diverged else
                  f"not reached in {limit} steps (last {s.metric} {float(last):.4f})")
        if len(s.seeds) > 1:
          status += f" (seed {seed})"
        break
      reached.append(h.reached)
      # The test figure where the tuned metric reached the target (validation tunes lr).
      tests.append(h.evals[TEST_OF[s.metric]][h.evals["step"].index(h.reached)])
    done = status == "reached"
    return dict(k=k, learning_rate=learning_rate, status=status,
                steps=int(round(float(np.mean(reached)))) if done else None,
                seed_steps=reached, test_at_target=float(np.mean(tests)) if done else None,
                wall_time=time.perf_counter() - start,
                microbatch_size=resolved.microbatch_size,
                accumulation_steps=resolved.accumulation_steps)

  return run_lr


def tune_k(run_lr, k: int, base_lr: float, first: int,
           s: ml_collections.ConfigDict) -> tuple[list[dict], int | None]:
  """Walk the grid lr = base_lr * lr_factor**j from j = first until the best is bracketed.

  Returns the runs (by lr) and the best j, or None if no lr reached the target.
  """
  budget = int(min(s.max_steps, max(1, s.max_examples // k)))
  runs: dict[int, dict] = {}

  def score(j):
    return runs[j]["steps"] if runs[j]["steps"] is not None else math.inf

  queue = [first, first + 1]  # the best lr rarely falls as k grows
  while queue and len(runs) < s.max_lrs:
    j = queue.pop(0)
    if j in runs:
      continue
    best = min((score(i) for i in runs), default=math.inf)
    limit = budget if math.isinf(best) else min(budget, int(best) - 1)
    lr = base_lr * s.lr_factor ** j
    runs[j] = run_lr(lr, limit) if limit >= 1 else dict(
        k=k, learning_rate=lr, steps=None, status="skipped", wall_time=0.0)
    r = runs[j]
    logging.info("k=%d lr=%.3g: %s%s (%.1fs)", k, lr, r["status"],
                 f" at step {r['steps']}" if r["steps"] else "", r["wall_time"])
    if queue:
      continue
    js = sorted(runs)
    best_j = min(js, key=lambda i: (score(i), i))
    diverged = lambda i: runs[i]["status"].startswith("diverged")
    if math.isinf(score(best_j)):  # nothing reached: go down if all diverged, else up
      queue = [js[0] - 1] if all(diverged(i) for i in js) else [js[-1] + 1]
    elif best_j == js[-1] and not diverged(best_j):
      queue = [best_j + 1]
    elif best_j == js[0]:
      queue = [best_j - 1]
  js = sorted(runs)
  reached = [j for j in js if runs[j]["steps"] is not None]
  best_j = min(reached, key=lambda i: (score(i), i)) if reached else None
  if queue:
    logging.warning("k=%d: max_lrs=%d runs did not bracket the best lr; its steps are an "
                    "upper bound (raise steps_to_target.max_lrs)", k, s.max_lrs)
  return [runs[j] for j in js], best_j


def best_runs(runs: list[dict]) -> dict[int, dict]:
  out = {}
  for r in runs:
    if r["steps"] is None:
      continue
    b = out.get(r["k"])
    if b is None or (r["steps"], r["learning_rate"]) < (b["steps"], b["learning_rate"]):
      out[r["k"]] = r
  return out


# ------------------------------------------------------------------------ report


def table(ks: list[int], runs: list[dict], best: dict[int, dict], fit) -> str:
  head = ("| k | micro-batch | best lr | steps | examples | fit S(k) | test at target "
          "| lrs tried (steps) |")
  rows = [head, "|---:|---:|---:|---:|---:|---:|---:|---|"]
  for k in ks:
    tried = ", ".join(f"{r['learning_rate']:.3g} ({r['steps'] if r['steps'] else '-'})"
                      for r in runs if r["k"] == k)
    b = best.get(k)
    fit_s = f"{float(fit.steps(k)):.0f}" if fit else "-"
    first = next(r for r in runs if r["k"] == k)
    micro = (f"{first['microbatch_size']} x {first['accumulation_steps']}"
             if first.get("accumulation_steps", 1) > 1 else "-")
    if b is None:
      rows.append(f"| {k} | {micro} | - | not reached | - | {fit_s} | - | {tried} |")
    else:
      rows.append(f"| {k} | {micro} | {b['learning_rate']:.3g} | {b['steps']} | "
                  f"{b['steps'] * k:,} | {fit_s} | {b['test_at_target']:.4g} | {tried} |")
  return "\n".join(rows)


def _finite(x):
  if isinstance(x, dict):
    return {k: _finite(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_finite(v) for v in x]
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def experiment(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The whole experiment; returns what results.json holds."""
  from sgdlab.results import noise_figures  # matplotlib only here
  s = config.steps_to_target
  dataset = data.load(config.data)
  validate(config, dataset.n_train)
  mesh = step.make_mesh(jax.devices()[:1])
  ks = batch_sizes(config, dataset.n_train)
  start = time.perf_counter()
  runs, j = [], 0
  for k in ks:
    t0 = time.perf_counter()
    run_lr = make_runner(config, dataset, mesh, k)
    logging.info("k=%d: compiled in %.1fs", k, time.perf_counter() - t0)
    k_runs, best_j = tune_k(run_lr, k, float(config.learning_rate), j, s)
    runs += k_runs
    j = j if best_j is None else best_j
  best = best_runs(runs)
  fit = None
  if len(best) >= 2:
    fit = noise.fit_steps(list(best), [b["steps"] for b in best.values()])
  sweep_time = time.perf_counter() - start

  # The noise run uses the tuned lr of the nearest k and runs past its steps to target.
  k_noise = int(s.noise_batch_size)
  near = min(best, key=lambda k: abs(math.log(k / k_noise)), default=None) if k_noise else None
  noise_lr = best[near]["learning_rate"] if near else float(config.learning_rate)
  noise_steps = best[near]["steps"] if near else 10 * math.ceil(dataset.n_train / max(k_noise, 1))
  t0 = time.perf_counter()
  noise_result = noise_run(config, dataset, mesh, k_noise, noise_lr,
                           math.ceil(noise_steps * s.noise_length)) if k_noise else None
  noise_time = time.perf_counter() - t0

  result = dict(
      config=config_lib.to_dict(config), n_train=dataset.n_train, batch_sizes=ks,
      metric=s.metric, target=s.target, runs=runs,
      best={str(k): b for k, b in best.items()},
      fit=dict(s_min=fit.s_min, b_noise=fit.b_noise, e_min=fit.e_min,
               rms_log_error=fit.rms_log_error) if fit else None,
      noise=noise_result, noise_target_step=noise_steps,
      seconds=dict(sweep=sweep_time, noise=noise_time),
      device=f"{jax.devices()[0].platform} x{mesh.size}")
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(_finite(result), f, indent=1)
  text = table(ks, runs, best, fit)
  noise_text = noise_table(noise_result) if noise_result else ""
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(text + "\n\n" + noise_text + "\n")
  noise_figures.steps_figure(result, os.path.join(workdir, "steps_to_target.png"))
  if noise_result:
    noise_figures.noise_figure(result, os.path.join(workdir, "noise_scale.png"))
  print(text)
  if fit:
    print(f"fit S = S_min (1 + B_noise / k): S_min = {fit.s_min:.1f} steps, "
          f"B_noise = {fit.b_noise:.0f}, E_min = {fit.e_min:,.0f} examples, "
          f"rms log error {fit.rms_log_error:.3f}")
  print(noise_text)
  print(f"sweep {sweep_time:.0f}s, noise run {noise_time:.0f}s; outputs in {workdir}")
  return result


def main(argv: list[str]) -> None:
  del argv
  config = cli.config()
  cli.call(lambda: validate(config, data.describe(config.data).n_train))
  experiment(config, flags.FLAGS.workdir or "runs/steps_to_target")


if __name__ == "__main__":
  # Flags only when run: config_flags imports this file again to call get_config.
  cli.define_config_flags(os.path.abspath(__file__))
  cli.main(main)
