"""Optimizers split into an lr-free update direction and the lr step.

The train step computes lr_t itself (see `sgdlab.schedules`), possibly from traced
per-member hyperparameters, so the optax part here never sees the learning rate:

  d_t, state = direction(cfg).update(g_t, state, params)
  updates    = apply_lr(d_t, lr_t)                        # = -lr_t * d_t

For a constant lr this is exactly optax.sgd(lr, momentum, nesterov) or
optax.adam(lr, b1, b2, eps), which chain the same transformations with
`scale_by_learning_rate`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sgdlab.errors import ConfigError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")


def direction(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The lr-free update direction d_t named by `cfg` (= config.optimizer).

    sgd:      d_t = g_t
    momentum: v_t = g_t + mu * v_{t-1},  d_t = v_t   (heavy ball, Polyak 1964)
    nesterov: v_t = g_t + mu * v_{t-1},  d_t = g_t + mu * v_t
              (Sutskever et al., On the importance of initialization and
              momentum in deep learning, 2013)
    adam:     d_t = m_hat_t / (sqrt(v_hat_t) + eps)  (Kingma & Ba, Adam, 2015)

  Momentum follows optax.trace (v_0 = 0, no dampening), as optax.sgd does.
  """
  validate(cfg)
  if cfg.name == "sgd":
    return optax.identity()
  if cfg.name in ("momentum", "nesterov"):
    return optax.trace(decay=cfg.momentum, nesterov=cfg.name == "nesterov")
  return optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)


def apply_lr(direction_updates: optax.Updates, lr: Any) -> optax.Updates:
  """updates = -lr * d, leaf by leaf, with lr cast to each leaf's dtype.

  Args:
    direction_updates: the pytree d_t from `direction(cfg).update`.
    lr: the learning rate lr_t; a Python number or a (traced) scalar array.

  Returns:
    The updates to add to the params (optax.apply_updates), dtypes unchanged.
  """
  return jax.tree.map(lambda u: -jnp.asarray(lr, u.dtype) * u,
                      direction_updates)


def default_config() -> ml_collections.ConfigDict:
  """config.optimizer: plain SGD; the other fields are used by their optimizers."""
  return ml_collections.ConfigDict(dict(
      name="sgd",
      momentum=0.9,  # momentum, nesterov.
      b1=0.9,  # adam.
      b2=0.999,  # adam.
      eps=1e-8,  # adam.
  ))


def _is_real(x: Any) -> bool:
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(
      x, bool)


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first invalid field of config.optimizer."""
  if cfg.name not in OPTIMIZERS:
    raise ConfigError("optimizer.name", cfg.name,
                      f"one of {', '.join(OPTIMIZERS)}")
  for field in ("momentum", "b1", "b2"):
    value = cfg[field]
    if not _is_real(value) or not 0.0 <= value < 1.0:
      raise ConfigError(f"optimizer.{field}", value, "a number in [0, 1)")
  if not _is_real(cfg.eps) or not cfg.eps > 0:
    raise ConfigError("optimizer.eps", cfg.eps, "a number > 0")
