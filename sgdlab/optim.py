"""Learning-rate schedules, batch-size scaling rules and lr-free update directions.

The train step computes lr_t itself, inside jit, from hyperparameters held in the train
state, so that a population of learning rates can be vmapped: `learning_rate` and
`lr_decay` below may be tracers. Every schedule maps `count`, the number of optimizer
updates already taken (0 for the first, as in optax and Keras), to lr_t, and equals the
peak learning rate at count 0 of its own clock (after any warmup). optax provides the
formulas it has; Keras' inverse-time decay it has not.

The optimizer is built the same way: `optimizer(cfg)` is optax's chain with the lr
passed to its update (`lr=lr_t`, `scale_by_lr`) where optax's alias has
`scale_by_learning_rate`, so each equals its optax alias (optax.sgd, adam, adamw, lars,
lamb) at any lr while lr_t stays a traced number from the state.
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


# ----------------------------------------------------------------- optimizers


def optimizer_config() -> ml_collections.ConfigDict:
  """config.optimizer: plain SGD; each other field is read by the optimizers `FIELDS` names."""
  return ml_collections.ConfigDict(dict(
      name="sgd",
      momentum=0.9,  # momentum, nesterov, lars
      b1=0.9,  # adam, adamw, lamb
      b2=0.999,  # adam, adamw, lamb
      eps=1e-8,  # adam, adamw, lamb (You et al. 2019 use 1e-6 for LAMB)
      trust_coefficient=0.001,  # lars: eta in eta * |w| / |g + wd w|
      trust_eps=0.0,  # lars: added to the trust ratio's denominator
      # sgd, momentum, nesterov, adam: L2, wd * w added to the gradient first (PyTorch,
      # Goyal et al. 2017). adamw, lamb: decoupled, added to the direction (Loshchilov &
      # Hutter 2019). lars: added to the gradient inside the trust ratio (You et al. 2017).
      weight_decay=0.0,
      # Which parameters get weight decay (and, for lars and lamb, the trust ratio):
      # "all", "matrices" (every parameter of 2 or more dimensions: no biases, no batch
      # norm scales or offsets, as the LARS and LAMB papers exclude them), or "auto":
      # matrices for adamw, lars and lamb, all for the others.
      decay_params="auto",
      clip_norm=0.0,  # > 0: clip the mean gradient to this global norm first (every optimizer)
  ))


# The fields each optimizer reads beside name, weight_decay, decay_params and clip_norm.
FIELDS = {"sgd": (), "momentum": ("momentum",), "nesterov": ("momentum",),
          "adam": ("b1", "b2", "eps"), "adamw": ("b1", "b2", "eps"),
          "lars": ("momentum", "trust_coefficient", "trust_eps"), "lamb": ("b1", "b2", "eps")}
OPTIMIZERS = tuple(FIELDS)
DECAY_PARAMS = ("auto", "all", "matrices")
_TRUSTED = ("adamw", "lars", "lamb")  # decay_params="auto" means matrices for these


def decay_mask(cfg: ml_collections.ConfigDict) -> Any:
  """None (every parameter) or params -> a tree of bools, True where a parameter has 2 or
  more dimensions: the parameters weight decay and the trust ratio apply to."""
  which = cfg.decay_params
  if which == "auto":
    which = "matrices" if cfg.name in _TRUSTED else "all"
  return None if which == "all" else (lambda params: jax.tree.map(lambda p: p.ndim > 1, params))


def scale_by_lr() -> optax.GradientTransformationExtraArgs:
  """updates -> -lr * updates, with lr passed to `update(..., lr=lr_t)`: the step computes
  lr_t from the state's hyperparameters, so a population of lrs is one program."""

  def update(updates, state, params=None, *, lr, **extra):
    del params, extra
    return apply_lr(updates, lr), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
  """The optimizer named by `cfg` (= config.optimizer, validated); its update takes the
  step's lr_t as `lr=` and returns the parameter updates.

    sgd:      -lr g
    momentum: v_t = g_t + mu v_{t-1}, -lr v_t           (heavy ball, Polyak 1964)
    nesterov: -lr (g_t + mu v_t)   (Sutskever et al., 2013)
    adam:     -lr m_hat / (sqrt(v_hat) + eps)            (Kingma & Ba, 2015)
    adamw:    -lr (adam's direction + wd w)              (Loshchilov & Hutter, 2019)
    lamb:     -lr r (adam's direction + wd w), r = |w| / |adam's direction + wd w| per
              parameter                                  (You et al., 2019)
    lars:     v_t = mu v_{t-1} + lr eta |w| / |g + wd w| (g + wd w), -v_t
              (You et al., 2017, Algorithm 1)
  Every form but LARS's applies the lr last, as optax's aliases do, so it equals them under
  any schedule. LARS multiplies by the lr before the momentum trace, as its paper and
  optax.lars do; lr-last would differ whenever lr_t changes. With momentum and the L2
  optimizers, wd w is added to the gradient before the direction. clip_norm clips the
  mean gradient first. Momentum follows optax.trace (v_0 = 0, no dampening).
  """
  mask, name = decay_mask(cfg), cfg.name
  decay = [optax.add_decayed_weights(cfg.weight_decay, mask)] if cfg.weight_decay else []
  clip = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []

  def trust(coefficient: float = 1.0, eps: float = 0.0) -> optax.GradientTransformation:
    ratio = optax.scale_by_trust_ratio(trust_coefficient=coefficient, eps=eps)
    return ratio if mask is None else optax.masked(ratio, mask)

  adam = lambda: optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)  # noqa: E731
  if name == "lars":
    return optax.chain(*clip, *decay, trust(cfg.trust_coefficient, cfg.trust_eps),
                       scale_by_lr(), optax.trace(decay=cfg.momentum))
  if name == "adamw":
    parts = [adam(), *decay]
  elif name == "lamb":
    parts = [adam(), *decay, trust()]
  elif name == "adam":
    parts = [*decay, adam()]
  elif name in ("momentum", "nesterov"):
    parts = [*decay, optax.trace(decay=cfg.momentum, nesterov=name == "nesterov")]
  else:
    parts = decay
  return optax.chain(*clip, *parts, scale_by_lr())


def apply_lr(direction_updates: optax.Updates, lr: Any) -> optax.Updates:
  """updates = -lr * d, leaf by leaf, with lr cast to each leaf's dtype."""
  return jax.tree.map(lambda u: -jnp.asarray(lr, u.dtype) * u, direction_updates)


def validate_optimizer(cfg: ml_collections.ConfigDict) -> None:
  """ConfigError naming the first invalid field of config.optimizer, or a field the chosen
  optimizer does not read set away from its default (it would change nothing)."""
  if cfg.name not in OPTIMIZERS:
    raise ConfigError("optimizer.name", cfg.name, f"one of {', '.join(OPTIMIZERS)}")
  defaults = optimizer_config()
  for field in ("momentum", "b1", "b2", "eps", "trust_coefficient", "trust_eps"):
    if field not in FIELDS[cfg.name] and cfg[field] != defaults[field]:
      raise ConfigError(f"optimizer.{field}", cfg[field],
                        f"left at {defaults[field]!r}: {cfg.name} has no {field} (its "
                        f"fields: {', '.join(FIELDS[cfg.name] or ('none',))})")
  for field in ("momentum", "b1", "b2"):
    check_number(f"optimizer.{field}", cfg[field], low=0, high=1, high_open=True,
                 what="a number in [0, 1)")
  check_number("optimizer.eps", cfg.eps, low=0, strict=True, what="a number > 0")
  for field in ("weight_decay", "trust_coefficient", "trust_eps", "clip_norm"):
    check_number(f"optimizer.{field}", cfg[field], low=0, what="a number >= 0")
  if cfg.decay_params not in DECAY_PARAMS:
    raise ConfigError("optimizer.decay_params", cfg.decay_params,
                      f"one of {', '.join(DECAY_PARAMS)}")
