"""Learning-rate schedules whose peak rate and decay may be traced JAX values.

The train step evaluates lr_t inside jit from hyperparameters stored in the train
state, so that a population of learning rates can be vmapped. Hence `learning_rate`
and `lr_decay` below may be tracers and are only ever combined with jnp ops; the
shape of a schedule (warmup_steps, decay_steps, boundaries, ...) is static config.

Every schedule maps `count`, the number of optimizer steps already taken (0 for the
first update, as in optax and Keras), to a float32 learning rate, and equals the
peak `learning_rate` at count 0 of its own clock (after any warmup).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sgdlab.errors import ConfigError

SCHEDULES = ("constant", "inverse_time", "exponential", "cosine", "step")
SCALING_RULES = ("none", "linear", "sqrt")


def _f32(x: Any) -> jnp.ndarray:
  return jnp.asarray(x, jnp.float32)


def inverse_time(learning_rate: Any, decay: Any) -> optax.Schedule:
  """Keras' legacy time-based decay: lr_t = lr / (1 + decay * t).

  This is what `keras.optimizers.SGD(lr, decay=...)` (Keras <= 2.x) applied, with
  t = `iterations`, the number of updates already taken (t = 0 for the first).

  References:
    Chollet et al., Keras, `keras/optimizers.py` (SGD.get_updates), 2015-2019.

  Args:
    learning_rate: initial rate lr; a Python number or a (traced) scalar array.
    decay: decay per step; 0 gives a constant rate. May be traced.

  Returns:
    A schedule count -> lr_t (float32).
  """

  def schedule(count):
    return _f32(learning_rate) / (1.0 + _f32(decay) * _f32(count))

  return schedule


def _constant(lr):
  return lambda count: _f32(lr) + jnp.zeros_like(_f32(count))


def _exponential(lr, decay_rate: float, transition_steps: int, staircase: bool):
  # lr * decay_rate ** (t / transition_steps); staircase floors the exponent.
  def schedule(count):
    p = _f32(count) / transition_steps
    if staircase:
      p = jnp.floor(p)
    return _f32(lr) * jnp.power(_f32(decay_rate), p)

  return schedule


def _cosine(lr, decay_steps: int, alpha: float):
  # lr * ((1 - alpha) * (1 + cos(pi * min(t, T) / T)) / 2 + alpha), with the
  # bracket written as sin(pi / 2 * (T - min(t, T)) / T) ** 2, which keeps full
  # relative float32 precision near t = T where 1 + cos(.) cancels.
  def schedule(count):
    remaining = (decay_steps - jnp.minimum(_f32(count), decay_steps)) / decay_steps
    cosine = jnp.square(jnp.sin(0.5 * jnp.pi * remaining))
    return _f32(lr) * ((1.0 - alpha) * cosine + alpha)

  return schedule


def _step(lr, boundaries: Sequence[int], factor: float):
  # lr * factor ** #{b in boundaries : t >= b}.
  def schedule(count):
    count = jnp.asarray(count)  # Compared unrounded: float32 is exact to 2**24.
    passed = sum((count >= b).astype(jnp.float32) for b in boundaries)
    return _f32(lr) * jnp.power(_f32(factor), passed + jnp.zeros_like(_f32(count)))

  return schedule


def _with_warmup(schedule, lr, warmup_steps: int, warmup_init: float):
  # Linear ramp lr * (w0 + (1 - w0) * t / W) for t < W, then schedule(t - W).
  def warmed(count):
    count = jnp.asarray(count)
    ramp = _f32(lr) * (warmup_init + (1.0 - warmup_init) * _f32(count) / warmup_steps)
    after = schedule(jnp.maximum(count - warmup_steps, 0))
    return jnp.where(count < warmup_steps, ramp, after)

  return warmed


def build(cfg: ml_collections.ConfigDict, learning_rate: Any, lr_decay: Any,
          total_steps: int) -> optax.Schedule:
  """The schedule named by `cfg` (= config.schedule), as count -> lr_t (float32).

  Formulas, with t the schedule's own step count (after warmup) and lr the peak:
    constant:     lr
    inverse_time: lr / (1 + lr_decay * t)                       (Keras legacy SGD)
    exponential:  lr * decay_rate ** (t / transition_steps), floored if staircase
    cosine:       lr * ((1 - alpha) * (1 + cos(pi * min(t, T) / T)) / 2 + alpha),
                  T = decay_steps or total_steps - warmup_steps  (Loshchilov &
                  Hutter, SGDR, 2017, without restarts)
    step:         lr * factor ** #{b in boundaries : t >= b}   (Goyal et al., 2017)
  With warmup_steps W > 0, count < W gives the linear ramp
  lr * (warmup_init + (1 - warmup_init) * count / W) (Goyal et al., 2017), and
  count >= W gives the schedule at t = count - W, so lr_W = lr.

  Args:
    cfg: the schedule config, see `default_config`.
    learning_rate: peak rate; a Python number or a (traced) scalar array.
    lr_decay: the inverse_time decay (ignored otherwise); may be traced.
    total_steps: number of optimizer steps in the run; sets the cosine length.

  Returns:
    A schedule count -> lr_t; count may be a traced integer array.

  Raises:
    ConfigError: for an invalid cfg, or a cosine schedule with no steps to decay.
  """
  validate(cfg)
  name = cfg.name
  if name == "constant":
    schedule = _constant(learning_rate)
  elif name == "inverse_time":
    schedule = inverse_time(learning_rate, lr_decay)
  elif name == "exponential":
    schedule = _exponential(learning_rate, cfg.decay_rate, cfg.transition_steps,
                            cfg.staircase)
  elif name == "cosine":
    decay_steps = cfg.decay_steps or total_steps - cfg.warmup_steps
    if decay_steps <= 0:
      raise ConfigError(
          "schedule.decay_steps", cfg.decay_steps,
          f"cosine needs decay_steps > 0; total_steps={total_steps} minus "
          f"warmup_steps={cfg.warmup_steps} leaves {decay_steps}")
    schedule = _cosine(learning_rate, decay_steps, cfg.alpha)
  else:
    schedule = _step(learning_rate, tuple(cfg.boundaries), cfg.factor)
  if cfg.warmup_steps > 0:
    schedule = _with_warmup(schedule, learning_rate, cfg.warmup_steps,
                            cfg.warmup_init)
  return schedule


def default_config() -> ml_collections.ConfigDict:
  """config.schedule: Keras-style inverse-time decay, no warmup."""
  return ml_collections.ConfigDict(dict(
      name="inverse_time",
      warmup_steps=0,  # Linear warmup length in steps; 0 disables it.
      warmup_init=0.0,  # Warmup starts at warmup_init * lr.
      decay_rate=0.96,  # exponential: factor per transition_steps.
      transition_steps=1000,  # exponential.
      staircase=False,  # exponential: decay in whole transitions.
      decay_steps=0,  # cosine length; 0 = total_steps - warmup_steps.
      alpha=0.0,  # cosine: final rate as a fraction of lr.
      boundaries=(),  # step: steps at which lr is multiplied by factor.
      factor=0.1,  # step.
  ))


def _is_int(x: Any) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(
      x, bool)


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first invalid field of config.schedule."""
  if cfg.name not in SCHEDULES:
    raise ConfigError("schedule.name", cfg.name, f"one of {', '.join(SCHEDULES)}")
  if not _is_int(cfg.warmup_steps) or cfg.warmup_steps < 0:
    raise ConfigError("schedule.warmup_steps", cfg.warmup_steps,
                      "an integer >= 0")
  if not _is_real(cfg.warmup_init) or not 0.0 <= cfg.warmup_init <= 1.0:
    raise ConfigError("schedule.warmup_init", cfg.warmup_init,
                      "a number in [0, 1]")
  if not _is_real(cfg.decay_rate) or not cfg.decay_rate > 0:
    raise ConfigError("schedule.decay_rate", cfg.decay_rate, "a number > 0")
  if not _is_int(cfg.transition_steps) or cfg.transition_steps <= 0:
    raise ConfigError("schedule.transition_steps", cfg.transition_steps,
                      "an integer > 0")
  if not isinstance(cfg.staircase, (bool, np.bool_)):
    raise ConfigError("schedule.staircase", cfg.staircase, "True or False")
  if not _is_int(cfg.decay_steps) or cfg.decay_steps < 0:
    raise ConfigError("schedule.decay_steps", cfg.decay_steps,
                      "an integer >= 0 (0: total_steps - warmup_steps)")
  if not _is_real(cfg.alpha) or not 0.0 <= cfg.alpha <= 1.0:
    raise ConfigError("schedule.alpha", cfg.alpha, "a number in [0, 1]")
  b = cfg.boundaries
  if (isinstance(b, (str, bytes)) or not isinstance(b, Sequence)
      or not all(_is_int(x) and x > 0 for x in b)
      or any(x >= y for x, y in zip(b, b[1:]))):
    raise ConfigError("schedule.boundaries", b,
                      "a strictly increasing sequence of integers > 0")
  if not _is_real(cfg.factor) or not cfg.factor > 0:
    raise ConfigError("schedule.factor", cfg.factor, "a number > 0")


def scaled_learning_rate(learning_rate: float, batch_size: int, rule: str,
                         base_batch_size: int) -> float:
  """The learning rate for batch size k, given one tuned at base_batch_size.

    none:   lr
    linear: lr * k / k_base        (Goyal et al., Accurate, Large Minibatch SGD:
                                    Training ImageNet in 1 Hour, 2017)
    sqrt:   lr * sqrt(k / k_base)  (Krizhevsky, One weird trick for
                                    parallelizing convolutional neural networks,
                                    2014)

  Raises:
    ConfigError: for an unknown rule (field "lr_scaling") or a batch size <= 0.
  """
  if rule not in SCALING_RULES:
    raise ConfigError("lr_scaling", rule, f"one of {', '.join(SCALING_RULES)}")
  if rule == "none":
    return learning_rate
  for field, k in (("batch_size", batch_size),
                   ("base_batch_size", base_batch_size)):
    if not _is_int(k) or k <= 0:
      raise ConfigError(field, k, "an integer > 0")
  ratio = batch_size / base_batch_size
  return learning_rate * (ratio if rule == "linear" else math.sqrt(ratio))
