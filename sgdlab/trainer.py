"""Training loop: config -> data on device -> compiled epochs -> History.

The loop is thin on purpose. Each epoch is one compiled program (sgdlab.step.make_epoch)
and the host only blocks on its per-step metrics once per epoch, then evaluates,
logs one line and decides whether to stop (a diverged run stops cleanly).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sgdlab import config as config_lib
from sgdlab import data, metrics, models, noise, optimizers, schedules, step
from sgdlab.history import History


@dataclasses.dataclass(frozen=True)
class Program:
  """The compiled pieces of one run, built from the config alone (no data needed).

  The memory estimator and the population trainer build the same Program, so the
  step they compile is the step that trains.
  """

  config: ml_collections.ConfigDict
  mesh: Mesh
  model: Any
  tx: Any
  lr_fn: step.LrFn
  train_step: Callable  # step.make_train_step(...): shard_map'd, not jitted
  eval_step: Callable
  input_shape: tuple[int, ...]
  num_classes: int
  steps_per_epoch: int

  def init_state(self) -> step.TrainState:
    c = self.config
    return step.init_state(self.model, self.tx, self.input_shape, seed=c.seed,
                           learning_rate=config_lib.learning_rate(c), lr_decay=c.lr_decay)

  def abstract_state(self) -> step.TrainState:
    return jax.eval_shape(self.init_state)

  def epoch_fn(self, max_steps: int | None = None):
    return step.make_epoch(self.train_step, self.mesh, int(self.config.batch_size), max_steps)

  def evaluate_fn(self):
    return step.make_evaluate(self.eval_step, self.mesh, self.config.eval_batch_size)


def build_program(config: ml_collections.ConfigDict, spec: data.DataSpec | data.Dataset,
                  mesh: Mesh | None = None) -> Program:
  """Model, optimizer, schedule and the train/eval steps for a validated config."""
  mesh = step.make_mesh() if mesh is None else mesh
  k = int(config.batch_size)
  n_train = spec.n_train
  steps_per_epoch = math.ceil(n_train / k)
  total_steps = steps_per_epoch * config.num_epochs

  def lr_fn(count, learning_rate, lr_decay):
    return schedules.build(config.schedule, learning_rate, lr_decay, total_steps)(count)

  model = models.build(config.model, spec.num_classes)
  tx = optimizers.direction(config.optimizer)
  return Program(
      config=config, mesh=mesh, model=model, tx=tx, lr_fn=lr_fn,
      train_step=step.make_train_step(model, tx, lr_fn, mesh, noise_scale=config.noise_scale),
      eval_step=step.make_eval_step(model, mesh), input_shape=tuple(spec.input_shape),
      num_classes=spec.num_classes, steps_per_epoch=steps_per_epoch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Place host arrays on every device of the mesh (data and state are replicated).

  In a multi-process run each process holds the whole value and fills only its own
  devices; the compiled epoch then gathers every global batch sharded over the mesh,
  so each device materializes just its own slice of each batch.
  """
  sharding = NamedSharding(mesh, P())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def prepare(config: ml_collections.ConfigDict, mesh: Mesh | None = None,
            dataset: data.Dataset | None = None) -> tuple[ml_collections.ConfigDict,
                                                          data.Dataset, Mesh]:
  """Validate fully (the checks that need the device count and the dataset too)."""
  config_lib.validate(config)
  mesh = step.make_mesh() if mesh is None else mesh
  dataset = data.load(config.data) if dataset is None else dataset
  if config.batch_size == "auto":
    from sgdlab import memory  # compiles candidate steps; only needed here
    config = memory.resolve_auto_batch_size(config, dataset, mesh)
  config_lib.validate(config, n_devices=mesh.size, n_train=dataset.n_train)
  return config, dataset, mesh


def train(config: ml_collections.ConfigDict, *, dataset: data.Dataset | None = None,
          mesh: Mesh | None = None, checkpoint_dir: str | None = None) -> History:
  """Train one run to the end (or to divergence) and return its History.

  With `checkpoint_dir` and `config.checkpoint_every_epochs` > 0 the run checkpoints
  every N epochs and after the last, and first continues from the newest readable
  checkpoint there: the result is bitwise the one of an uninterrupted run.
  """
  config, dataset, mesh = prepare(config, mesh, dataset)
  program = build_program(config, dataset, mesh)
  x_train, y_train, x_test, y_test = replicate(
      (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test), mesh)
  state = replicate(program.init_state(), mesh)
  data_key = replicate(data_order_key(config), mesh)

  t0 = time.perf_counter()
  epoch_fn = program.epoch_fn().lower(state, x_train, y_train, data_key,
                                      jnp.int32(0)).compile()
  evaluate = program.evaluate_fn().lower(state.params, x_test, y_test).compile()
  compile_time = time.perf_counter() - t0

  history = History(name=config_lib.run_name(config), config=config_lib.to_dict(config),
                    compile_time=compile_time)
  ema = noise.NoiseEMA(config.noise_ema) if config.noise_scale else None
  saver, first_epoch = None, 0
  if checkpoint_dir and config.checkpoint_every_epochs:
    from sgdlab import checkpoint  # orbax only for runs that checkpoint
    saver = checkpoint.Checkpointer(checkpoint_dir, config.checkpoint_every_epochs)
    restored = saver.restore(state)
    if restored is not None:
      state, first_epoch = restored.state, restored.epoch
      checkpoint.resume_history(history, restored, ema)
      logging.info("%s | resumed from the checkpoint at epoch %d", history.name, first_epoch)
  for epoch in range(first_epoch, config.num_epochs):
    start = time.perf_counter()
    steps_before = int(state.step)
    state, step_metrics = epoch_fn(state, x_train, y_train, data_key, jnp.int32(epoch))
    step_metrics = jax.device_get(step_metrics)  # blocks: one sync per epoch
    diverged_at = int(state.diverged_at)
    if diverged_at >= 0:
      record_divergence(history, step_metrics, epoch=epoch, steps_before=steps_before,
                        diverged_at=diverged_at, ema=ema)
      break
    test = jax.device_get(evaluate(state.params, x_test, y_test))
    record_epoch(history, config, epoch, step_metrics, test, wall=time.perf_counter() - start,
                 n_train=dataset.n_train, ema=ema)
    if saver is not None and saver.due(epoch + 1, config.num_epochs):
      saver.save(epoch + 1, state, history)
  if saver is not None:
    saver.close()
  return finish(history, config, state)


def data_order_key(config: ml_collections.ConfigDict) -> jax.Array:
  """The key of a run's batch order: (key, epoch) -> permutation; derives from the seed."""
  return jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)


def record_divergence(history: History, step_metrics: dict[str, np.ndarray], *, epoch: int,
                      steps_before: int, diverged_at: int,
                      ema: noise.NoiseEMA | None) -> None:
  """Keep the epoch's steps up to and including the failing one; no epoch row."""
  kept = diverged_at - steps_before + 1
  _append_steps(history, {key: v[:kept] for key, v in step_metrics.items()}, ema)
  history.diverged = f"diverged at step {diverged_at + 1} (epoch {epoch + 1})"
  logging.warning("%s | %s", history.name, history.diverged)


def record_epoch(history: History, config: ml_collections.ConfigDict, epoch: int,
                 step_metrics: dict[str, np.ndarray], test: dict[str, Any], *, wall: float,
                 n_train: int, ema: noise.NoiseEMA | None) -> None:
  """Append a finished epoch: its steps, its row of means and test figures, one log line."""
  _append_steps(history, step_metrics, ema)
  row = dict(epoch=epoch + 1, **metrics.epoch_means(step_metrics),
             test_loss=float(test["loss"]), test_accuracy=float(test["accuracy"]),
             lr=float(step_metrics["lr"][-1]), wall_time=wall, examples_per_sec=n_train / wall)
  if ema is not None:
    row["grad_sq"], row["trace_sigma"], row["noise_scale"] = ema.values()
  for key, value in row.items():
    history.epochs.setdefault(key, []).append(value)
  logging.info("%s | epoch %d/%d | train loss %.4f acc %.4f | test loss %.4f acc %.4f | "
               "lr %.4g | %.2fs %.0f ex/s%s", history.name, epoch + 1, config.num_epochs,
               row["train_loss"], row["train_accuracy"], row["test_loss"],
               row["test_accuracy"], row["lr"], wall, row["examples_per_sec"],
               f" | B_simple {row['noise_scale']:.1f}" if ema is not None else "")


def finish(history: History, config: ml_collections.ConfigDict,
           state: step.TrainState) -> History:
  """Diagnostics from the whole curve, and the final state."""
  history.diagnostics = metrics.diagnose(history.epochs, diverged=history.diverged,
                                         batch_size=int(config.batch_size),
                                         learning_rate=config.learning_rate)
  for note in history.diagnostics:
    logging.info("%s | %s", history.name, note)
  history.state = state
  return history


def _append_steps(history: History, step_metrics: dict[str, np.ndarray],
                  ema: noise.NoiseEMA | None) -> None:
  history.steps.setdefault("loss", []).extend(np.asarray(step_metrics["loss"]).tolist())
  history.steps.setdefault("lr", []).extend(np.asarray(step_metrics["lr"]).tolist())
  if ema is None:
    return
  grad_sq, trace = noise.online_estimates(step_metrics["g_small_sq"], step_metrics["g_big_sq"],
                                          step_metrics["b_small"], step_metrics["b_big"])
  full = np.asarray(step_metrics["full"]) > 0
  grad_sq, trace = np.where(full, grad_sq, np.nan), np.where(full, trace, np.nan)
  ema.update(grad_sq, trace)
  history.steps.setdefault("grad_sq", []).extend(grad_sq.tolist())
  history.steps.setdefault("trace_sigma", []).extend(trace.tolist())
