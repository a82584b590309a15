"""B_simple during one training run of the steps-to-target experiment, against exact.

The online estimate in training (config.noise_scale=True; its EMA per step, its
windowed trend, its per-epoch mean, and the trainer's probe at each epoch's end,
config.noise_probe_batches), and at checkpoints of the same run both exactly
(per-example gradients over the whole training set, `sgdlab.noise.exact`) and by the
online estimator averaged over many batches at the checkpoint's parameters. Used by
experiments/steps_to_target.py, which documents the command and its cost. Run on its
own, it repeats the noise run over seeds, noise_groups and probe sizes and prints how
far each in-training estimate is from exact at each checkpoint:

  python experiments/noise_checkpoints.py --seeds=0,1,2 --noise_groups=16 --probe_batches=4,15

(the MLP/MNIST run at k=256, lr 0.905 (the tuned lr), 176 steps; about 90 s a run on
2 CPU cores). The checkpoints are epoch ends, where the probe runs, so the probe is
compared at the very parameters exact B_simple is computed at.

Beside the EMA it reports `noise.windowed_curve`: exponential trends of |G|^2 and
tr(Sigma) over the last 3 per-step estimates, read at the checkpoint (causal: what the
trainer knows once it has the checkpoint's own batch), and a post-hoc two-sided
version (2 estimates either side). Exact B_simple at 62 single steps of this run
(k=256, lr 0.905, seeds 0 and 1) is why the windows are this short: B_simple jumps
2-5x from one step to the next (seed 0: 26, 11, 9.6 at steps 15-17; 287, 165, 558 at
79-81), and one batch's estimate is within 20% of exact at its own parameters only
43% of the time, so a longer window averages real changes, not noise. Median
|log(estimate / exact)| over those steps: EMA 0.78, causal window 0.29, two-sided 0.30.
Those figures were measured with two halves (noise_groups=0). A miss early in
training is the checkpoint's own batch: its tr(Sigma) estimate, a sample variance over
one degree of freedom with halves. With noise_groups=16 (15 degrees of freedom, what
steps_to_target.py uses) the causal window was within 20% at steps 16 and 32 at 5 of
6 checkpoints of seeds 0-2 (halves: 2 of 6); at steps 80 and 176, where B_simple is
above k and one batch's |G|^2 estimate is mostly noise, at 1 of 6 (halves 0 of 6).
The probe, 15 batches at the epoch's end (what steps_to_target.py runs), was within
10% at steps 16, 32 and 80 for all three seeds, and at step 176 (B_simple up to 1,146,
a quarter of the 4,000 digits) within 23%. README, "Gradient noise scale and steps to
a target", has the table.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from sgdlab import config as config_lib
from sgdlab import data, models, noise
from sgdlab import trainer
from sgdlab.train import fixed_params, program as program_lib, run as run_lib

WINDOW = 3  # causal noise.windowed_curve: the last 3 per-step estimates (module docstring)
HALF_WIDTH = 2  # post-hoc two-sided version: 2 estimates either side


def noise_run(config: ml_collections.ConfigDict, dataset: data.Dataset, mesh, k: int,
              learning_rate: float, steps: int) -> dict[str, Any]:
  """Ordinary training with noise_scale=True, and exact B_simple at its checkpoints.

  Runs sgdlab.train.trainer.train for enough epochs to cover `steps`; the checkpoints are
  the same run stopped after fewer epochs (same seed, so the same trajectory).
  """
  s = config.steps_to_target
  c = config.copy_and_resolve_references()
  c.batch_size, c.learning_rate, c.noise_scale = k, learning_rate, True
  c.noise_probe_batches = int(s.noise_probe_batches)
  if models.has_batch_norm(c.model):  # batch statistics of real examples only
    c.drop_remainder = True
  steps_per_epoch = (dataset.n_train // k if c.drop_remainder
                     else math.ceil(dataset.n_train / k))
  epochs = max(1, math.ceil(steps / steps_per_epoch))
  c.num_epochs = epochs
  history = trainer.train(c, dataset=dataset, mesh=mesh)
  n = dataset.n_train
  grad_sq, trace = np.asarray(history.steps["grad_sq"]), np.asarray(history.steps["trace_sigma"])
  # The trainer's estimates treat the data as infinite; correct them for the n examples
  # that batches are drawn from without replacement (see sgdlab.noise).
  grad_sq_n, trace_n = grad_sq + trace / n, trace * (n - 1) / n
  curve = noise.ema_curve(grad_sq_n, trace_n, c.noise_ema)
  # Index s: B_simple at the parameters after s steps (length steps + 1).
  window = noise.windowed_curve(grad_sq_n, trace_n, WINDOW)
  window_post_hoc = noise.windowed_curve(grad_sq_n, trace_n, HALF_WIDTH, two_sided=True)
  # The ratio of each epoch's mean estimates: no lag, more noise than the EMA.
  epoch_slices = [slice(i, i + steps_per_epoch) for i in range(0, len(trace_n), steps_per_epoch)]
  per_epoch = [np.nanmean(trace_n[e]) / np.nanmean(grad_sq_n[e]) for e in epoch_slices]
  # The trainer's probe at each epoch's end (finite-n corrected already): epoch e's row
  # is at the parameters of the checkpoint after e epochs.
  probe = list(history.epochs.get("probe_noise_scale", []))

  # No checkpoints (noise_checkpoints=0) where per-example gradients have no meaning:
  # batch norm, whose example gradients depend on the batch.
  ckpt_epochs = sorted({0, *np.unique(np.round(np.geomspace(1, epochs, s.noise_checkpoints))
                                      .astype(int)).tolist()}) if s.noise_checkpoints else []
  program = program_lib.build_program(config_lib.resolve(c, n_devices=mesh.size,
                                                     spec=dataset.spec()), mesh)
  loss_fn = noise.classifier_loss(program.model)
  checkpoints = []
  for e in ckpt_epochs:
    if e == 0:
      state = program.init_state()
    else:
      c_e = c.copy_and_resolve_references()
      c_e.num_epochs = e
      state = history.state if e == epochs else trainer.train(c_e, dataset=dataset,
                                                          mesh=mesh).state
    t0 = time.perf_counter()
    unit = dataset.unit()  # float32 images, as the step computes on
    ex = noise.exact(loss_fn, state.params, unit.x_train, unit.y_train)
    t_exact = time.perf_counter() - t0
    t0 = time.perf_counter()
    on = fixed_params.online_at_fixed_params(program.train_step, mesh, state, unit.x_train,
                                      dataset.y_train, batch_size=k,
                                      num_batches=s.noise_fixed_batches, seed=e,
                                      n_population=n)
    t_online = time.perf_counter() - t0
    raw_b = (on.trace_sigma * n / (n - 1)) / (on.grad_sq - on.trace_sigma / (n - 1))
    t = int(state.step)
    checkpoints.append(dict(
        epoch=e, step=t, ema_b_simple=float(curve[t - 1]) if t else math.nan,
        probe_b_simple=float(probe[e - 1]) if e and probe else math.nan,
        window_b_simple=float(window[t]), window_two_sided_b_simple=float(window_post_hoc[t]),
        exact_grad_sq=ex.grad_sq,
        exact_trace_sigma=ex.trace_sigma, exact_b_simple=ex.b_simple,
        online_grad_sq=on.grad_sq, online_trace_sigma=on.trace_sigma,
        online_b_simple=on.b_simple, online_b_simple_uncorrected=raw_b,
        online_grad_sq_se=on.grad_sq_se, online_trace_sigma_se=on.trace_sigma_se,
        online_batches=on.count, exact_seconds=t_exact, online_seconds=t_online))
    logging.info("checkpoint epoch %d (step %d): B_simple exact %.1f, online %.1f "
                 "(uncorrected %.1f), in training: EMA %.1f, window %.1f, probe %.1f", e, t,
                 ex.b_simple, on.b_simple, raw_b, checkpoints[-1]["ema_b_simple"], window[t],
                 checkpoints[-1]["probe_b_simple"])
  return dict(batch_size=k, learning_rate=learning_rate, epochs=epochs, n_train=n,
              steps_per_epoch=steps_per_epoch,
              noise_fixed_batches=int(s.noise_fixed_batches),
              noise_ema=c.noise_ema, step_grad_sq=grad_sq_n.tolist(),
              step_trace_sigma=trace_n.tolist(), step_b_simple_ema=curve.tolist(),
              noise_window=WINDOW, noise_half_width=HALF_WIDTH,
              step_b_simple_window=window.tolist(),
              step_b_simple_window_two_sided=window_post_hoc.tolist(),
              epoch_b_simple_mean=[float(v) for v in per_epoch],
              epoch_b_simple_trainer=list(history.epochs["noise_scale"]),
              noise_probe_batches=c.noise_probe_batches, epoch_b_simple_probe=probe,
              test_accuracy=list(history.epochs["test_accuracy"]),
              checkpoints=checkpoints)


def noise_table(n: dict[str, Any]) -> str:
  """Exact B_simple at the checkpoints against the online estimates; without
  checkpoints (batch norm, language models), the online estimates per epoch."""
  w, h = n.get("noise_window", WINDOW), n.get("noise_half_width", HALF_WIDTH)
  if not n["checkpoints"]:
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
  rows = [f"| step | exact B_simple | online, {n['noise_fixed_batches']} batches at fixed "
          f"params | same, without the finite-n correction | online EMA in training | "
          f"online, trend of last {w} steps (causal) | same, {h} steps either side "
          f"(post hoc) | probe in training, {n.get('noise_probe_batches', 0)} batches at the "
          f"epoch's end |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]

  def rel(v, ref):
    if v is None or not math.isfinite(v):
      return "-"
    return f"{v:.1f} ({100 * (v / ref - 1):+.1f}%)"

  for c in n["checkpoints"]:
    ex = c["exact_b_simple"]
    rows.append(f"| {c['step']} | {ex:.1f} | {rel(c['online_b_simple'], ex)} | "
                f"{rel(c['online_b_simple_uncorrected'], ex)} | {rel(c['ema_b_simple'], ex)} | "
                f"{rel(c.get('window_b_simple'), ex)} | "
                f"{rel(c.get('window_two_sided_b_simple'), ex)} | "
                f"{rel(c.get('probe_b_simple'), ex)} |")
  return "\n".join(rows)


def main(argv: list[str]) -> None:
  del argv
  import steps_to_target  # pylint: disable=g-import-not-at-top
  from sgdlab.train import step  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  mesh = step.make_mesh(jax.devices()[:1])
  dataset = data.load(steps_to_target.get_config().data)  # the same digits for every run
  print("| noise_groups | probe batches | seed | per checkpoint step: exact B_simple; error "
        "of the causal window, the EMA, the probe | within 20%: window, probe |\n"
        "|---:|---:|---:|---|---:|")
  for groups in (int(g) for g in f.noise_groups):
    for probes in (int(p) for p in f.probe_batches):
      for seed in (int(v) for v in f.seeds):
        c = steps_to_target.get_config()
        c.seed, c.noise_groups = seed, groups
        c.steps_to_target.noise_fixed_batches = 4  # exact is the reference here
        c.steps_to_target.noise_probe_batches = probes
        r = noise_run(c, dataset, mesh, f.batch_size, f.learning_rate, f.steps)
        cks = [x for x in r["checkpoints"] if x["step"]]
        err = lambda v, x: 100 * (v / x["exact_b_simple"] - 1)
        cells = "; ".join(
            f"{x['step']}: {x['exact_b_simple']:.0f}; {err(x['window_b_simple'], x):+.0f}%, "
            f"{err(x['ema_b_simple'], x):+.0f}%, {err(x['probe_b_simple'], x):+.0f}%"
            for x in cks)
        hits = lambda key: sum(abs(err(x[key], x)) < 20 for x in cks)
        print(f"| {groups} | {probes} | {seed} | {cells} | {hits('window_b_simple')}, "
              f"{hits('probe_b_simple') if probes else '-'} of {len(cks)} |", flush=True)


if __name__ == "__main__":
  # Flags only when run on its own: steps_to_target imports this module for noise_run.
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the noise run.")
  flags.DEFINE_list("noise_groups", ["16"], "config.noise_groups to compare.")
  flags.DEFINE_list("probe_batches", ["4", "15"], "config.noise_probe_batches to compare.")
  flags.DEFINE_integer("batch_size", 256, "k of the noise run.")
  flags.DEFINE_float("learning_rate", 0.01 * 2 ** 6.5, "Its constant lr (the tuned one).")
  flags.DEFINE_integer("steps", 176, "Steps to run (4x the steps to target).")
  app.run(main)
