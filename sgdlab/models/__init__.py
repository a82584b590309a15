"""Models for batch-size studies, and the registry that names them (`config.model.name`).

The models are deliberately small: the science here is about k and the learning rate,
and a model that trains in seconds lets a sweep cover many of them. Each takes inputs
[batch, ...] and returns logits; `build` makes one from a validated config.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from sgdlab.errors import ConfigError
from sgdlab.models import conv
from sgdlab.models.cnn import CNN
from sgdlab.models.mlp import MLP

__all__ = ["CNN", "MLP", "MODELS", "build", "default_config", "validate"]


def _mlp(cfg: ml_collections.ConfigDict, num_classes: int, dtype: Any) -> nn.Module:
  return MLP(hidden=tuple(cfg.hidden), num_classes=num_classes, dropout=cfg.dropout,
             dtype=dtype, remat=cfg.remat)


def _cnn(cfg: ml_collections.ConfigDict, num_classes: int, dtype: Any) -> nn.Module:
  return CNN(features=tuple(cfg.features), dense=cfg.dense, num_classes=num_classes,
             dropout=cfg.conv_dropout, dense_dropout=cfg.dense_dropout,
             conv_impl=cfg.conv_impl, dtype=dtype, remat=cfg.remat)


# name -> builder(config.model, num_classes, compute dtype). Every model takes
# `dtype` (compute; parameters float32, logits float32) and `model.remat`.
MODELS: dict[str, Callable[[ml_collections.ConfigDict, int, Any], nn.Module]] = {
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
      conv_impl="auto",  # kernel gradient: "im2col" matmul on CPU, "xla" elsewhere
      remat=False,  # recompute each block's activations in the backward pass
  ))


def validate(cfg: ml_collections.ConfigDict) -> None:
  """ConfigError naming the first invalid field of config.model."""
  if cfg.name not in MODELS:
    raise ConfigError("model.name", cfg.name, f"one of {sorted(MODELS)}")
  for field in ("dropout", "conv_dropout", "dense_dropout"):
    if not 0.0 <= cfg[field] < 1.0:
      raise ConfigError(f"model.{field}", cfg[field], "a rate in [0, 1)")
  for field in ("hidden", "features"):
    if any(int(w) < 1 for w in cfg[field]):
      raise ConfigError(f"model.{field}", tuple(cfg[field]), "positive widths")
  if cfg.conv_impl not in conv.IMPLS:
    raise ConfigError("model.conv_impl", cfg.conv_impl, f"one of {list(conv.IMPLS)}")
  if cfg.dense < 1:
    raise ConfigError("model.dense", cfg.dense, "a positive width")


def build(cfg: ml_collections.ConfigDict, num_classes: int,
          dtype: str = "float32") -> nn.Module:
  """The model named by a validated `config.model`, computing in `dtype`."""
  return MODELS[cfg.name](cfg, num_classes, jnp.dtype(dtype))
