"""Keras' mnist_cnn: the convolutional model of the memory and conv-speed studies."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


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
