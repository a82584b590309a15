"""The CIFAR ResNets of He et al. 2016 (section 4.2), with batch norm, as the batch-size
papers train them.

depth = 6n + 2: a 3x3 stem of `width` filters, three stages of n basic blocks at
width, 2 x width and 4 x width (the first block of stages 2 and 3 halves the
resolution), global average pooling and a dense layer. ResNet-8 (n = 1) and ResNet-20
(n = 3) at width 16 are the models of Shallue et al. 2018's CIFAR-10 experiments;
Goyal et al. 2017's zero-initialized last batch-norm scale in each residual block
makes every block start as the identity, which is what lets large k train at a large
learning rate. Shortcuts that change shape are 1x1 convolutions with batch norm
(He et al.'s option B). Convolutions are sgdlab's `Conv` (models/conv.py), without
biases: batch norm follows each one.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from sgdlab.models.batchnorm import BatchNorm
from sgdlab.models.conv import Conv


class BasicBlock(nn.Module):
  """conv-bn-relu-conv-bn (+ shortcut), relu."""

  features: int
  strides: int
  norm: Callable[..., nn.Module]
  conv: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    s = (self.strides, self.strides)
    y = self.conv(self.features, (3, 3), strides=s, name="conv0")(x)
    y = nn.relu(self.norm(name="bn0")(y, train))
    y = self.conv(self.features, (3, 3), name="conv1")(y)
    y = self.norm(scale_init=nn.initializers.zeros, name="bn1")(y, train)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = self.conv(self.features, (1, 1), strides=s, name="shortcut")(x)
      x = self.norm(name="shortcut_bn")(x, train)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet-(6n+2) for 32x32 (or any) images; logits float32."""

  depth: int = 8
  width: int = 16
  num_classes: int = 10
  bn_mode: str = "device"
  bn_virtual_batch_size: int = 0
  conv_impl: str = "auto"
  kernel_init: Callable[..., Any] = nn.initializers.he_normal()
  dtype: Any = jnp.float32
  remat: bool = False  # recompute each block in the backward pass (jax.checkpoint)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if x.ndim == 2:  # flat input: a one-channel square image
      side = int(round(x.shape[1] ** 0.5))
      x = x.reshape((x.shape[0], side, side, 1))
    norm = functools.partial(BatchNorm, mode=self.bn_mode,
                             virtual_batch_size=self.bn_virtual_batch_size)
    conv = functools.partial(Conv, padding="SAME", use_bias=False, impl=self.conv_impl,
                             dtype=self.dtype, kernel_init=self.kernel_init)
    block = nn.remat(BasicBlock, static_argnums=(2,)) if self.remat else BasicBlock
    x = nn.relu(norm(name="stem_bn")(conv(self.width, (3, 3), name="stem")(x), train))
    for stage in range(3):
      for b in range((self.depth - 2) // 6):
        x = block(self.width * 2 ** stage, 2 if stage and not b else 1, norm, conv,
                  name=f"stage{stage}_block{b}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(x).astype(jnp.float32)
