"""The ImageNet ResNets of He et al. 2016 (section 3.3, table 1), version 1.5, as the
large-batch papers train them.

ResNet-18, -34, -50 and -101 come from one code path: a 7x7 stride-2 stem with batch
norm and a 3x3 stride-2 max-pool, four stages of residual blocks at width, 2x, 4x and
8x width (the first block of stages 2-4 halves the resolution), global average pooling
and a dense layer. 18 and 34 stack basic blocks (two 3x3 convolutions), 50 and 101
bottleneck blocks (1x1, 3x3, 1x1 at 4x the inner width).

Version 1.5 is the ResNet-50 of torchvision, NVIDIA's and MLPerf's reference: in a
bottleneck that halves the resolution the stride sits in the 3x3 convolution, not in
the first 1x1 (which, at stride 2, would read only a quarter of its input). It costs
more FLOPs than He et al.'s v1 and is the ResNet-50 that MLPerf's and NVIDIA's
large-batch results are measured on. Every padding is torchvision's (k // 2 on each
side, not XLA's "SAME", which pads a stride-2 layer one more at the bottom and right),
so the layers line up with the reference's pixel for pixel, and the parameters are
exactly torchvision's (25,557,032 for ResNet-50: tests/models/test_resnet_imagenet.py).

Shortcuts that change shape are 1x1 convolutions with batch norm (He et al.'s option
B). Goyal et al. 2017 zero-initialize the last batch-norm scale of each residual
block, so every block starts as relu(shortcut) and the net as a shallow one: with
warmup, part of what lets k = 8192 train at the linearly scaled learning rate.
Convolutions are sgdlab's `Conv` (models/conv.py), without biases: batch norm follows
each one.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from sgdlab.models.batchnorm import BatchNorm
from sgdlab.models.conv import Conv
from sgdlab.models.resnet import BasicBlock  # ResNet-18/34's block, the CIFAR nets' own

# depth -> (bottleneck blocks?, blocks per stage): He et al. 2016, table 1.
STAGES: dict[int, tuple[bool, tuple[int, ...]]] = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
}
DEPTHS = tuple(STAGES)
EXPANSION = 4  # a bottleneck's output channels per inner channel
# He et al. 2015's normal init with fan_out, as torchvision and Goyal et al.'s Caffe2
# code ("MSRAFill") draw it: an untruncated normal of variance 2 / (kh * kw * out).
# fan_out keeps the backward pass's gradient variance constant through the ReLUs (He
# et al. 2015, section 2.2) where fan_in keeps the forward one; with batch norm after
# every convolution either trains, and fan_out is the reference's choice.
FAN_OUT_NORMAL = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pad(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """torchvision's padding for an odd kernel: kernel // 2 rows and columns on each side."""
  return ((kernel // 2, kernel // 2),) * 2


def _padded(conv: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
  """conv with torchvision's padding for its kernel: the blocks name no padding."""
  def make(features: int, kernel: tuple[int, int], **kwargs: Any) -> nn.Module:
    return conv(features, kernel, padding=_pad(kernel[0]), **kwargs)
  return make


def _shortcut(block: nn.Module, x: jnp.ndarray, out: int, train: bool) -> jnp.ndarray:
  """x itself, or where the shape changes a strided 1x1 convolution and batch norm
  (He et al. 2016's option B)."""
  if block.strides == 1 and x.shape[-1] == out:
    return x
  s = (block.strides, block.strides)
  x = block.conv(out, (1, 1), strides=s, name="shortcut")(x)
  return block.norm(name="shortcut_bn")(x, train)


class Bottleneck(nn.Module):
  """ResNet-50/101's block, v1.5: 1x1 - bn - relu - 3x3 (stride) - bn - relu - 1x1 to
  4 x features - bn (scale 0), + shortcut, relu."""

  features: int  # the inner width; the block outputs EXPANSION x features channels
  strides: int
  norm: Callable[..., nn.Module]
  conv: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    s, out = (self.strides, self.strides), self.features * EXPANSION
    y = self.conv(self.features, (1, 1), name="conv0")(x)
    y = nn.relu(self.norm(name="bn0")(y, train))
    y = self.conv(self.features, (3, 3), strides=s, name="conv1")(y)
    y = nn.relu(self.norm(name="bn1")(y, train))
    y = self.conv(out, (1, 1), name="conv2")(y)
    y = self.norm(scale_init=nn.initializers.zeros, name="bn2")(y, train)
    return nn.relu(_shortcut(self, x, out, train) + y)


class ImageNetResNet(nn.Module):
  """ResNet-`depth` v1.5 (18, 34, 50, 101) for 224x224 (or any) images; logits float32.

  `width` is the stem's and the first stage's filters (64 in He et al.; smaller for
  tests and small studies); stage i has width x 2^i (x 4 at a bottleneck's output).
  Parameters are float32, computation in `dtype`; batch norm's statistics are float32
  (models/batchnorm.py). `remat` recomputes each block in the backward pass.
  """

  depth: int = 50
  width: int = 64
  num_classes: int = 1000
  bn_mode: str = "device"
  bn_virtual_batch_size: int = 0
  conv_impl: str = "auto"
  kernel_init: Callable[..., Any] = FAN_OUT_NORMAL
  dtype: Any = jnp.float32
  remat: bool = False  # recompute each block in the backward pass (jax.checkpoint)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if self.depth not in STAGES:
      raise ValueError(f"ImageNet ResNet depth must be one of {DEPTHS}, got {self.depth}")
    if x.ndim == 2:  # flat input: a one-channel square image
      side = int(round(x.shape[1] ** 0.5))
      x = x.reshape((x.shape[0], side, side, 1))
    norm = functools.partial(BatchNorm, mode=self.bn_mode,
                             virtual_batch_size=self.bn_virtual_batch_size)
    conv = _padded(functools.partial(Conv, use_bias=False, impl=self.conv_impl,
                                     dtype=self.dtype, kernel_init=self.kernel_init))
    bottleneck, blocks = STAGES[self.depth]
    kind = Bottleneck if bottleneck else BasicBlock
    block = nn.remat(kind, static_argnums=(2,)) if self.remat else kind
    x = conv(self.width, (7, 7), strides=(2, 2), name="stem")(x)
    x = nn.relu(norm(name="stem_bn")(x, train))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
    for stage, n in enumerate(blocks):
      for b in range(n):
        x = block(self.width * 2 ** stage, 2 if stage and not b else 1, norm, conv,
                  name=f"stage{stage}_block{b}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(x).astype(jnp.float32)
