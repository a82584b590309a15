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

SCHEDULES = ("constant", "inverse_time", "exponential", "cosine", "polynomial", "step")
WARMUP_FROM = ("fraction", "base")
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
      warmup_epochs=0.0,  # or in epochs (rounded to whole steps); not both
      warmup_from="fraction",  # fraction: start at warmup_init * lr; base: at the lr
      #                          before lr_scaling (Goyal et al.'s gradual warmup)
      warmup_init=0.0,  # warmup starts at warmup_init * lr
      decay_rate=0.96,  # exponential: factor per transition_steps
      transition_steps=1000,  # exponential
      staircase=False,  # exponential: decay in whole transitions
      decay_steps=0,  # cosine, polynomial: length; 0 = total_steps - warmup_steps
      alpha=0.0,  # cosine, polynomial: final rate as a fraction of lr
      power=2.0,  # polynomial: the exponent (2 in You et al.'s LARS runs and MLPerf)
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
    polynomial:   lr * (alpha + (1 - alpha) * (1 - min(t, T) / T) ** power)  (You et al.,
                  LARS, 2017; the MLPerf ResNet-50 LARS schedule, with warmup)
    step:         lr * factor ** #{b in boundaries : t >= b}   (Goyal et al., 2017)
  With warmup_steps W > 0, count < W ramps linearly from warmup_init * lr to lr
  (Goyal et al., 2017), and count >= W gives the schedule at t = count - W. Warmup in
  epochs, or from the unscaled lr, is first turned into these two fields by
  `resolve_warmup`.
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
    schedule = optax.cosine_decay_schedule(learning_rate, decay_length(cfg, total_steps),
                                           alpha=cfg.alpha)
  elif name == "polynomial":
    schedule = optax.polynomial_schedule(learning_rate, _f32(learning_rate) * cfg.alpha,
                                         cfg.power, decay_length(cfg, total_steps))
  else:
    schedule = optax.piecewise_constant_schedule(
        learning_rate, {int(b): cfg.factor for b in cfg.boundaries})
  if cfg.warmup_steps > 0:
    ramp = optax.linear_schedule(_f32(learning_rate) * cfg.warmup_init, learning_rate,
                                 cfg.warmup_steps)
    schedule = optax.join_schedules([ramp, schedule], [cfg.warmup_steps])
  return lambda count: _f32(schedule(count))


def decay_length(cfg: ml_collections.ConfigDict, total_steps: int) -> int:
  """T of the cosine and polynomial schedules: decay_steps, or the updates after warmup."""
  return cfg.decay_steps or total_steps - cfg.warmup_steps


def resolve_warmup(cfg: ml_collections.ConfigDict, steps_per_epoch: int,
                   lr_scale: float) -> ml_collections.ConfigDict:
  """config.schedule with its warmup in steps from an initial fraction of lr.

  warmup_epochs E becomes round(E * steps_per_epoch) steps. warmup_from="base" starts the
  ramp at the lr before lr_scaling, lr / lr_scale (Goyal et al. 2017: from eta to k eta /
  256 over 5 epochs), so that the scaling rule applies to the warmup as well.
  """
  out = ml_collections.ConfigDict(cfg.to_dict())
  if cfg.warmup_epochs:
    out.warmup_steps, out.warmup_epochs = int(round(cfg.warmup_epochs * steps_per_epoch)), 0.0
  if cfg.warmup_from == "base":
    out.warmup_init, out.warmup_from = 1.0 / lr_scale, "fraction"
  return out


def validate_schedule(cfg: ml_collections.ConfigDict, total_steps: int | None = None,
                      steps_per_epoch: int | None = None, lr_scale: float = 1.0) -> None:
  """ConfigError naming the first invalid field of config.schedule; with total_steps, also
  what the run's length decides (warmup within the run, a decay left after it), lr_scale
  being lr_scaling's factor for this k."""
  if cfg.name not in SCHEDULES:
    raise ConfigError("schedule.name", cfg.name, f"one of {', '.join(SCHEDULES)}")
  check_number("schedule.warmup_steps", cfg.warmup_steps, low=0, integer=True,
               what="an integer >= 0")
  check_number("schedule.warmup_epochs", cfg.warmup_epochs, low=0, what="a number >= 0")
  if cfg.warmup_steps and cfg.warmup_epochs:
    raise ConfigError("schedule.warmup_epochs", cfg.warmup_epochs,
                      f"0 when warmup_steps={cfg.warmup_steps} is set (one of the two)")
  if cfg.warmup_from not in WARMUP_FROM:
    raise ConfigError("schedule.warmup_from", cfg.warmup_from, f"one of {list(WARMUP_FROM)}")
  check_number("schedule.warmup_init", cfg.warmup_init, low=0, high=1, what="a number in [0, 1]")
  check_number("schedule.power", cfg.power, low=0, strict=True, what="a number > 0")
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
  if total_steps is not None:
    _check_against_run(cfg, total_steps, steps_per_epoch or total_steps, lr_scale)


def _check_against_run(cfg: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int,
                       lr_scale: float) -> None:
  """The checks that need the run's length and its lr scaling."""
  warm = resolve_warmup(cfg, steps_per_epoch, max(lr_scale, 1e-30))
  if warm.warmup_steps > total_steps:
    field = "warmup_epochs" if cfg.warmup_epochs else "warmup_steps"
    raise ConfigError(f"schedule.{field}", cfg[field],
                      f"a warmup within the run's {total_steps} updates "
                      f"({total_steps // steps_per_epoch} epochs of {steps_per_epoch}); "
                      f"this is {warm.warmup_steps} updates")
  if cfg.warmup_from == "base" and lr_scale < 1:
    raise ConfigError("schedule.warmup_from", cfg.warmup_from,
                      f"'fraction': lr_scaling lowers this k's lr (x{lr_scale:.3g}), so a "
                      "warmup from the base lr would fall")
  if cfg.name in ("cosine", "polynomial") and decay_length(warm, total_steps) <= 0:
    raise ConfigError("schedule.decay_steps", cfg.decay_steps,
                      f"{cfg.name} needs decay_steps > 0; total_steps={total_steps} minus "
                      f"warmup_steps={warm.warmup_steps} leaves "
                      f"{decay_length(warm, total_steps)}")


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
