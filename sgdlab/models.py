"""Flax models for batch-size studies, and the registry that names them.

The models are deliberately small: the science here is about k and the learning rate,
and a model that trains in seconds lets a sweep cover many of them. Both take images
[batch, H, W, C] (or any input shape for the MLP) and return logits.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from sgdlab.errors import ConfigError


class MLP(nn.Module):
  """Dense ReLU network on the flattened input (the classic 784-512-512-10)."""

  hidden: Sequence[int] = (512, 512)
  num_classes: int = 10
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, name=f"dense{i}")(x))
      if self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="logits")(x)


class CNN(nn.Module):
  """Keras' mnist_cnn shape: conv-conv-maxpool-dropout-dense-dropout-dense.

  Dropout is active only with train=True and then needs a 'dropout' rng, which the
  train step derives from (seed, step, device) so runs are reproducible.
  """

  features: Sequence[int] = (32, 64)
  dense: int = 128
  num_classes: int = 10
  dropout: float = 0.25
  dense_dropout: float = 0.5

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if x.ndim == 2:  # flat input: treat as a one-channel square image if possible
      side = int(round(x.shape[1] ** 0.5))
      x = x.reshape((x.shape[0], side, side, 1))
    for i, f in enumerate(self.features):
      x = nn.relu(nn.Conv(f, (3, 3), padding="VALID", name=f"conv{i}")(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.dense, name="dense")(x))
    x = nn.Dropout(self.dense_dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="logits")(x)


def _mlp(cfg: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  return MLP(hidden=tuple(cfg.hidden), num_classes=num_classes, dropout=cfg.dropout)


def _cnn(cfg: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  return CNN(features=tuple(cfg.features), dense=cfg.dense, num_classes=num_classes,
             dropout=cfg.conv_dropout, dense_dropout=cfg.dense_dropout)


MODELS: dict[str, Callable[[ml_collections.ConfigDict, int], nn.Module]] = {
    "mlp": _mlp,
    "cnn": _cnn,
}


def default_config() -> ml_collections.ConfigDict:
  """Fields for every registered model; each model reads the ones it needs."""
  return ml_collections.ConfigDict(dict(
      name="mlp",
      hidden=(512, 512),  # mlp
      features=(32, 64),  # cnn conv widths
      dense=128,  # cnn dense width
      dropout=0.0,  # mlp: after each hidden layer
      conv_dropout=0.25,  # cnn: after the pool
      dense_dropout=0.5,  # cnn: after the dense layer
  ))


def validate(cfg: ml_collections.ConfigDict) -> None:
  if cfg.name not in MODELS:
    raise ConfigError("model.name", cfg.name, f"one of {sorted(MODELS)}")
  for field in ("dropout", "conv_dropout", "dense_dropout"):
    if not 0.0 <= cfg[field] < 1.0:
      raise ConfigError(f"model.{field}", cfg[field], "a rate in [0, 1)")
  for field in ("hidden", "features"):
    if any(int(w) < 1 for w in cfg[field]):
      raise ConfigError(f"model.{field}", tuple(cfg[field]), "positive widths")
  if cfg.dense < 1:
    raise ConfigError("model.dense", cfg.dense, "a positive width")


def build(cfg: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  validate(cfg)
  return MODELS[cfg.name](cfg, num_classes)
