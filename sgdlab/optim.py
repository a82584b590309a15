"""Learning-rate schedules, batch-size scaling rules and lr-free update directions.

The train step computes lr_t itself, inside jit, from hyperparameters held in the train
state, so that a population of learning rates can be vmapped: `learning_rate` and
`lr_decay` below may be tracers. Every schedule maps `count`, the number of optimizer
updates already taken (0 for the first, as in optax and Keras), to lr_t, and equals the
peak learning rate at count 0 of its own clock (after any warmup). optax provides the
formulas it has; Keras' inverse-time decay it has not.

The optimizer is split the same way: `direction(cfg)` is optax's transformation without
`scale_by_learning_rate`, and the step applies `-lr_t * d_t` (`apply_lr`). For a
constant lr that is exactly optax.sgd / optax.adam.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sgdlab.errors import ConfigError, check_number

SCHEDULES = ("constant", "inverse_time", "exponential", "cosine", "step")
SCALING_RULES = ("none", "linear", "sqrt")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")


def _f32(x: Any) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def inverse_time(learning_rate: Any, decay: Any) -> optax.Schedule:
  """Keras' legacy time-based decay: lr_t = lr / (1 + decay * t).

  What `keras.optimizers.SGD(lr, decay=...)` (Keras <= 2.x) applied, with t =
  `iterations`, the updates already taken. optax has no such schedule.

  References:
    Chollet et al., Keras, `keras/optimizers.py` (SGD.get_updates), 2015-2019.
  """

  def schedule(count):
    return _f32(learning_rate) / (1.0 + _f32(decay) * _f32(count))

  return schedule


def schedule_config() -> ml_collections.ConfigDict:
  """config.schedule: Keras-style inverse-time decay, no warmup."""
  return ml_collections.ConfigDict(dict(
      name="inverse_time",
      warmup_steps=0,  # linear warmup length in steps; 0 disables it
      warmup_init=0.0,  # warmup starts at warmup_init * lr
      decay_rate=0.96,  # exponential: factor per transition_steps
      transition_steps=1000,  # exponential
      staircase=False,  # exponential: decay in whole transitions
      decay_steps=0,  # cosine length; 0 = total_steps - warmup_steps
      alpha=0.0,  # cosine: final rate as a fraction of lr
      boundaries=(),  # step: updates at which lr is multiplied by factor
      factor=0.1,  # step
  ))


def build_schedule(cfg: ml_collections.ConfigDict, learning_rate: Any, lr_decay: Any,
                   total_steps: int) -> optax.Schedule:
  """The schedule named by `cfg` (= config.schedule, already validated), count -> lr_t.

    constant:     lr
    inverse_time: lr / (1 + lr_decay * t)                       (Keras legacy SGD)
    exponential:  lr * decay_rate ** (t / transition_steps), floored if staircase
    cosine:       lr * ((1 - alpha) * (1 + cos(pi * min(t, T) / T)) / 2 + alpha),
                  T = decay_steps or total_steps - warmup_steps  (Loshchilov & Hutter,
                  SGDR, 2017, without restarts)
    step:         lr * factor ** #{b in boundaries : t >= b}   (Goyal et al., 2017)
  With warmup_steps W > 0, count < W ramps linearly from warmup_init * lr to lr
  (Goyal et al., 2017), and count >= W gives the schedule at t = count - W.
  """
  name = cfg.name
  if name == "constant":
    schedule = lambda count: _f32(learning_rate) + jnp.zeros_like(_f32(count))
  elif name == "inverse_time":
    schedule = inverse_time(learning_rate, lr_decay)
  elif name == "exponential":
    schedule = optax.exponential_decay(learning_rate, cfg.transition_steps, cfg.decay_rate,
                                       staircase=cfg.staircase)
  elif name == "cosine":
    schedule = optax.cosine_decay_schedule(learning_rate, cosine_steps(cfg, total_steps),
                                           alpha=cfg.alpha)
  else:
    schedule = optax.piecewise_constant_schedule(
        learning_rate, {int(b): cfg.factor for b in cfg.boundaries})
  if cfg.warmup_steps > 0:
    ramp = optax.linear_schedule(_f32(learning_rate) * cfg.warmup_init, learning_rate,
                                 cfg.warmup_steps)
    schedule = optax.join_schedules([ramp, schedule], [cfg.warmup_steps])
  return lambda count: _f32(schedule(count))


def cosine_steps(cfg: ml_collections.ConfigDict, total_steps: int) -> int:
  return cfg.decay_steps or total_steps - cfg.warmup_steps


def validate_schedule(cfg: ml_collections.ConfigDict, total_steps: int | None = None) -> None:
  """ConfigError naming the first invalid field of config.schedule."""
  if cfg.name not in SCHEDULES:
    raise ConfigError("schedule.name", cfg.name, f"one of {', '.join(SCHEDULES)}")
  check_number("schedule.warmup_steps", cfg.warmup_steps, low=0, integer=True,
               what="an integer >= 0")
  check_number("schedule.warmup_init", cfg.warmup_init, low=0, high=1, what="a number in [0, 1]")
  check_number("schedule.decay_rate", cfg.decay_rate, low=0, strict=True, what="a number > 0")
  check_number("schedule.transition_steps", cfg.transition_steps, low=0, strict=True,
               integer=True, what="an integer > 0")
  if not isinstance(cfg.staircase, (bool, np.bool_)):
    raise ConfigError("schedule.staircase", cfg.staircase, "True or False")
  check_number("schedule.decay_steps", cfg.decay_steps, low=0, integer=True,
               what="an integer >= 0 (0: total_steps - warmup_steps)")
  check_number("schedule.alpha", cfg.alpha, low=0, high=1, what="a number in [0, 1]")
  b = cfg.boundaries
  if (isinstance(b, (str, bytes)) or not isinstance(b, Sequence)
      or not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x > 0
                 for x in b)
      or any(x >= y for x, y in zip(b, b[1:]))):
    raise ConfigError("schedule.boundaries", b, "a strictly increasing sequence of integers > 0")
  check_number("schedule.factor", cfg.factor, low=0, strict=True, what="a number > 0")
  if cfg.name == "cosine" and total_steps is not None and cosine_steps(cfg, total_steps) <= 0:
    raise ConfigError("schedule.decay_steps", cfg.decay_steps,
                      f"cosine needs decay_steps > 0; total_steps={total_steps} minus "
                      f"warmup_steps={cfg.warmup_steps} leaves "
                      f"{cosine_steps(cfg, total_steps)}")


def scaled_learning_rate(learning_rate: float, batch_size: int, rule: str,
                         base_batch_size: int) -> float:
  """The learning rate for batch size k, given one tuned at base_batch_size.

    none:   lr
    linear: lr * k / k_base        (Goyal et al., Accurate, Large Minibatch SGD:
                                    Training ImageNet in 1 Hour, 2017)
    sqrt:   lr * sqrt(k / k_base)  (Krizhevsky, One weird trick for parallelizing
                                    convolutional neural networks, 2014)
  """
  if rule == "none":
    return learning_rate
  ratio = batch_size / base_batch_size
  return learning_rate * (ratio if rule == "linear" else math.sqrt(ratio))


# ----------------------------------------------------------------- directions


def optimizer_config() -> ml_collections.ConfigDict:
  """config.optimizer: plain SGD; the other fields are used by their optimizers."""
  return ml_collections.ConfigDict(dict(
      name="sgd",
      momentum=0.9,  # momentum, nesterov
      b1=0.9,  # adam
      b2=0.999,  # adam
      eps=1e-8,  # adam
      weight_decay=0.0,  # L2: wd * w added to the gradient before the direction
  ))


def direction(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The lr-free update direction d_t named by `cfg` (= config.optimizer, validated).

    sgd:      d_t = g_t
    momentum: v_t = g_t + mu * v_{t-1},  d_t = v_t   (heavy ball, Polyak 1964)
    nesterov: v_t = g_t + mu * v_{t-1},  d_t = g_t + mu * v_t
              (Sutskever et al., On the importance of initialization and momentum in
              deep learning, 2013)
    adam:     d_t = m_hat_t / (sqrt(v_hat_t) + eps)  (Kingma & Ba, Adam, 2015)

  Momentum follows optax.trace (v_0 = 0, no dampening), as optax.sgd does. With
  weight_decay the gradient is g_t + wd * w_t before any of these, as PyTorch's SGD
  (and Goyal et al. 2017) apply it to every parameter.
  """
  if cfg.name == "sgd":
    tx = optax.identity()
  elif cfg.name in ("momentum", "nesterov"):
    tx = optax.trace(decay=cfg.momentum, nesterov=cfg.name == "nesterov")
  else:
    tx = optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  return optax.chain(optax.add_decayed_weights(cfg.weight_decay), tx) if cfg.weight_decay else tx


def apply_lr(direction_updates: optax.Updates, lr: Any) -> optax.Updates:
  """updates = -lr * d, leaf by leaf, with lr cast to each leaf's dtype."""
  return jax.tree.map(lambda u: -jnp.asarray(lr, u.dtype) * u, direction_updates)


def validate_optimizer(cfg: ml_collections.ConfigDict) -> None:
  """ConfigError naming the first invalid field of config.optimizer."""
  if cfg.name not in OPTIMIZERS:
    raise ConfigError("optimizer.name", cfg.name, f"one of {', '.join(OPTIMIZERS)}")
  for field in ("momentum", "b1", "b2"):
    check_number(f"optimizer.{field}", cfg[field], low=0, high=1, high_open=True,
                 what="a number in [0, 1)")
  check_number("optimizer.eps", cfg.eps, low=0, strict=True, what="a number > 0")
  check_number("optimizer.weight_decay", cfg.weight_decay, low=0, what="a number >= 0")
