"""B_simple during one ordinary training run, against exact B_simple at its checkpoints.

McCandlish et al. (2018)'s simple noise scale B_simple = tr(Sigma) / |G|^2, three ways
in one run (`sgdlab.noise` has the estimators):
- in training (config.noise_scale=True): the EMA per step, its windowed trend
  (`noise.windowed_curve`: the last WINDOW per-step estimates, causal, and HALF_WIDTH
  either side, post hoc), the per-epoch mean, and the trainer's probe at each epoch's
  end (config.noise_probe_batches);
- at checkpoints (epoch ends, where the probe runs) exactly, from per-example gradients
  over the whole training set (`noise.exact`), and by the online estimator averaged over
  steps_to_target.noise_fixed_batches batches at the checkpoint's parameters.

Why the windows are this short: exact B_simple jumps 2-5x from one step to the next in
the MLP/MNIST run at k=256, so a longer window averages real changes, not noise
(experiments/noise_checkpoints.py has the measurements). `compare` repeats the run over
seeds, noise_groups and probe sizes and tells how far each estimate is from exact.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from sgdlab import config as config_lib
from sgdlab import data, models, noise
from sgdlab import trainer
from sgdlab.train import fixed_params, program as program_lib

WINDOW = 3  # causal noise.windowed_curve: the last 3 per-step estimates
HALF_WIDTH = 2  # post-hoc two-sided version: 2 estimates either side


def noise_config(config: ml_collections.ConfigDict, n_train: int, k: int,
                 learning_rate: float, steps: int) -> ml_collections.ConfigDict:
  """The run's config: k, the lr, noise_scale on, the probe, whole epochs covering `steps`."""
  c = config.copy_and_resolve_references()
  c.batch_size, c.learning_rate, c.noise_scale = k, learning_rate, True
  c.noise_probe_batches = int(config.steps_to_target.noise_probe_batches)
  if models.has_batch_norm(c.model):  # batch statistics of real examples only
    c.drop_remainder = True
  c.num_epochs = max(1, math.ceil(steps / _steps_per_epoch(c, n_train)))
  return c


def _steps_per_epoch(c: ml_collections.ConfigDict, n_train: int) -> int:
  return n_train // c.batch_size if c.drop_remainder else math.ceil(n_train / c.batch_size)


def in_training(history: Any, n: int, steps_per_epoch: int, ema: float) -> dict[str, Any]:
  """The in-training estimates of a History with noise_scale=True: per step (finite-n
  corrected), EMA, windows, per epoch, and the probe."""
  grad_sq = np.asarray(history.steps["grad_sq"])
  trace = np.asarray(history.steps["trace_sigma"])
  # The trainer's estimates treat the data as infinite; correct them for the n examples
  # that batches are drawn from without replacement (see sgdlab.noise).
  grad_sq_n, trace_n = grad_sq + trace / n, trace * (n - 1) / n
  epochs = [slice(i, i + steps_per_epoch) for i in range(0, len(trace_n), steps_per_epoch)]
  return dict(
      grad_sq=grad_sq_n, trace=trace_n,
      ema=noise.ema_curve(grad_sq_n, trace_n, ema),
      # Index s: B_simple at the parameters after s steps (length steps + 1).
      window=noise.windowed_curve(grad_sq_n, trace_n, WINDOW),
      window_post_hoc=noise.windowed_curve(grad_sq_n, trace_n, HALF_WIDTH, two_sided=True),
      # The ratio of each epoch's mean estimates: no lag, more noise than the EMA.
      per_epoch=[float(np.nanmean(trace_n[e]) / np.nanmean(grad_sq_n[e])) for e in epochs],
      # The trainer's probe at each epoch's end (finite-n corrected already): epoch e's
      # row is at the parameters of the checkpoint after e epochs.
      probe=list(history.epochs.get("probe_noise_scale", [])))


def checkpoint_epochs(count: int, epochs: int) -> list[int]:
  """0 and `count` epochs geometrically spaced up to the last; none for count 0 (batch
  norm, language models: per-example gradients have no meaning or no exact reference)."""
  if not count:
    return []
  return sorted({0, *np.unique(np.round(np.geomspace(1, epochs, count)).astype(int)).tolist()})


def at_checkpoint(program: Any, state: Any, dataset: data.Dataset, mesh: Mesh, k: int,
                  num_batches: int, epoch: int, curves: dict[str, Any]) -> dict[str, Any]:
  """Exact B_simple at `state`, the fixed-params estimate there, and what training read."""
  n = dataset.n_train
  t0 = time.perf_counter()
  unit = dataset.unit()  # float32 images, as the step computes on
  ex = noise.exact(noise.classifier_loss(program.model), state.params, unit.x_train,
                   unit.y_train)
  t_exact = time.perf_counter() - t0
  t0 = time.perf_counter()
  on = fixed_params.online_at_fixed_params(program.train_step, mesh, state, unit.x_train,
                                           dataset.y_train, batch_size=k,
                                           num_batches=num_batches, seed=epoch, n_population=n)
  t_online = time.perf_counter() - t0
  raw_b = (on.trace_sigma * n / (n - 1)) / (on.grad_sq - on.trace_sigma / (n - 1))
  t, probe = int(state.step), curves["probe"]
  return dict(
      epoch=epoch, step=t, ema_b_simple=float(curves["ema"][t - 1]) if t else math.nan,
      probe_b_simple=float(probe[epoch - 1]) if epoch and probe else math.nan,
      window_b_simple=float(curves["window"][t]),
      window_two_sided_b_simple=float(curves["window_post_hoc"][t]),
      exact_grad_sq=ex.grad_sq, exact_trace_sigma=ex.trace_sigma, exact_b_simple=ex.b_simple,
      online_grad_sq=on.grad_sq, online_trace_sigma=on.trace_sigma,
      online_b_simple=on.b_simple, online_b_simple_uncorrected=raw_b,
      online_grad_sq_se=on.grad_sq_se, online_trace_sigma_se=on.trace_sigma_se,
      online_batches=on.count, exact_seconds=t_exact, online_seconds=t_online)


def noise_run(config: ml_collections.ConfigDict, dataset: data.Dataset, mesh: Mesh, k: int,
              learning_rate: float, steps: int) -> dict[str, Any]:
  """Ordinary training with noise_scale=True, and exact B_simple at its checkpoints.

  Trains whole epochs covering `steps`; a checkpoint is the same run stopped after fewer
  epochs (same seed, constant schedule: the same trajectory). Returns the dict that
  results.json holds under "noise".
  """
  s, n = config.steps_to_target, dataset.n_train
  c = noise_config(config, n, k, learning_rate, steps)
  steps_per_epoch, epochs = _steps_per_epoch(c, n), c.num_epochs
  history = trainer.train(c, dataset=dataset, mesh=mesh)
  curves = in_training(history, n, steps_per_epoch, c.noise_ema)
  program = program_lib.build_program(
      config_lib.resolve(c, n_devices=mesh.size, spec=dataset.spec()), mesh)
  checkpoints = []
  for e in checkpoint_epochs(s.noise_checkpoints, epochs):
    if e == 0:
      state = program.init_state()
    else:
      c_e = c.copy_and_resolve_references()
      c_e.num_epochs = e
      state = history.state if e == epochs else trainer.train(c_e, dataset=dataset,
                                                          mesh=mesh).state
    ck = at_checkpoint(program, state, dataset, mesh, k, s.noise_fixed_batches, e, curves)
    checkpoints.append(ck)
    logging.info("checkpoint epoch %d (step %d): B_simple exact %.1f, online %.1f "
                 "(uncorrected %.1f), in training: EMA %.1f, window %.1f, probe %.1f", e,
                 ck["step"], ck["exact_b_simple"], ck["online_b_simple"],
                 ck["online_b_simple_uncorrected"], ck["ema_b_simple"],
                 ck["window_b_simple"], ck["probe_b_simple"])
  return dict(batch_size=k, learning_rate=learning_rate, epochs=epochs, n_train=n,
              steps_per_epoch=steps_per_epoch, noise_fixed_batches=int(s.noise_fixed_batches),
              noise_ema=c.noise_ema, step_grad_sq=curves["grad_sq"].tolist(),
              step_trace_sigma=curves["trace"].tolist(), step_b_simple_ema=curves["ema"].tolist(),
              noise_window=WINDOW, noise_half_width=HALF_WIDTH,
              step_b_simple_window=curves["window"].tolist(),
              step_b_simple_window_two_sided=curves["window_post_hoc"].tolist(),
              epoch_b_simple_mean=curves["per_epoch"],
              epoch_b_simple_trainer=list(history.epochs["noise_scale"]),
              noise_probe_batches=c.noise_probe_batches, epoch_b_simple_probe=curves["probe"],
              test_accuracy=list(history.epochs["test_accuracy"]), checkpoints=checkpoints)


def _cell(v: float | None, ref: float) -> str:
  if v is None or not math.isfinite(v):
    return "-"
  return f"{v:.1f} ({100 * (v / ref - 1):+.1f}%)"


def noise_table(n: dict[str, Any]) -> str:
  """Exact B_simple at the checkpoints against the online estimates; without
  checkpoints (batch norm, language models), the online estimates per epoch."""
  if not n["checkpoints"]:
    return _epoch_table(n)
  w, h = n.get("noise_window", WINDOW), n.get("noise_half_width", HALF_WIDTH)
  rows = [f"| step | exact B_simple | online, {n['noise_fixed_batches']} batches at fixed "
          f"params | same, without the finite-n correction | online EMA in training | "
          f"online, trend of last {w} steps (causal) | same, {h} steps either side "
          f"(post hoc) | probe in training, {n.get('noise_probe_batches', 0)} batches at the "
          f"epoch's end |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for c in n["checkpoints"]:
    ex = c["exact_b_simple"]
    rows.append(f"| {c['step']} | {ex:.1f} | {_cell(c['online_b_simple'], ex)} | "
                f"{_cell(c['online_b_simple_uncorrected'], ex)} | "
                f"{_cell(c['ema_b_simple'], ex)} | {_cell(c.get('window_b_simple'), ex)} | "
                f"{_cell(c.get('window_two_sided_b_simple'), ex)} | "
                f"{_cell(c.get('probe_b_simple'), ex)} |")
  return "\n".join(rows)


def _epoch_table(n: dict[str, Any]) -> str:
  fmt = lambda v: "-" if v is None or not math.isfinite(v) else f"{v:.1f}"
  probe = n.get("epoch_b_simple_probe") or [math.nan] * len(n["test_accuracy"])
  rows = [f"| epoch | B_simple, ratio of the epoch's mean estimates | the trainer's "
          f"per-epoch figure (EMA) | probe, {n.get('noise_probe_batches', 0)} batches at "
          f"the epoch's end | test accuracy | (k={n['batch_size']}, "
          f"lr {n['learning_rate']:.3g}) |", "|---:|---:|---:|---:|---:|---|"]
  rows += [f"| {e + 1} | {fmt(a)} | {fmt(b)} | {fmt(p)} | {t:.3f} | |"
           for e, (a, b, p, t) in enumerate(zip(
               n["epoch_b_simple_mean"], n["epoch_b_simple_trainer"], probe,
               n["test_accuracy"]))]
  return "\n".join(rows)


COMPARE_HEAD = ("| noise_groups | probe batches | seed | per checkpoint step: exact B_simple; "
                "error of the causal window, the EMA, the probe | within 20%: window, probe |\n"
                "|---:|---:|---:|---|---:|")


def compare_row(result: dict[str, Any], groups: int, probes: int, seed: int) -> str:
  """One row of `compare`: how far each in-training estimate is from exact per checkpoint."""
  cks = [x for x in result["checkpoints"] if x["step"]]
  err = lambda v, x: 100 * (v / x["exact_b_simple"] - 1)
  cells = "; ".join(
      f"{x['step']}: {x['exact_b_simple']:.0f}; {err(x['window_b_simple'], x):+.0f}%, "
      f"{err(x['ema_b_simple'], x):+.0f}%, {err(x['probe_b_simple'], x):+.0f}%" for x in cks)
  hits = lambda key: sum(abs(err(x[key], x)) < 20 for x in cks)
  return (f"| {groups} | {probes} | {seed} | {cells} | {hits('window_b_simple')}, "
          f"{hits('probe_b_simple') if probes else '-'} of {len(cks)} |")


def compare(config: ml_collections.ConfigDict, *, seeds: Sequence[int],
            noise_groups: Sequence[int], probe_batches: Sequence[int], batch_size: int,
            learning_rate: float, steps: int, mesh: Mesh) -> list[str]:
  """The noise run of `config` over seeds x noise_groups x probe sizes, printed as a
  table row by row (exact B_simple is the reference: few fixed-params batches)."""
  dataset = data.load(config.data)  # the same examples for every run
  print(COMPARE_HEAD)
  rows = []
  for groups in noise_groups:
    for probes in probe_batches:
      for seed in seeds:
        c = config.copy_and_resolve_references()
        c.seed, c.noise_groups = int(seed), int(groups)
        c.steps_to_target.noise_probe_batches = int(probes)
        r = noise_run(c, dataset, mesh, batch_size, learning_rate, steps)
        rows.append(compare_row(r, groups, probes, seed))
        print(rows[-1], flush=True)
  return rows
