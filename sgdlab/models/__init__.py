"""Models for batch-size studies, and the registry that names them (`config.model.name`).

The models are small by default: the science here is about k and the learning rate,
and a model that trains in seconds lets a sweep cover many of them. Each takes inputs
[batch, ...] and returns float32 logits ([batch, seq_len, 256] for the language model);
`build` makes one from a validated config.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from sgdlab.errors import ConfigError
from sgdlab.models import batchnorm, conv
from sgdlab.models.cnn import CNN
from sgdlab.models.mlp import MLP
from sgdlab.models.resnet import ResNet
from sgdlab.models.resnet_imagenet import DEPTHS as IMAGENET_DEPTHS, ImageNetResNet
from sgdlab.models.transformer import Transformer

__all__ = ["CNN", "ImageNetResNet", "MLP", "MODELS", "ResNet", "Transformer", "build",
           "default_config", "has_batch_norm", "validate"]

KERNEL_INITS = {"lecun_normal": nn.initializers.lecun_normal(),
                "glorot_uniform": nn.initializers.glorot_uniform()}
# Sizes are per model (a ResNet's depth counts layers, a Transformer's blocks): a config
# that sets a shared `depth` or `width` is told the per-model names.
_RENAMED = {"depth": "imagenet_depth, resnet_depth or transformer_depth",
            "width": "imagenet_width, resnet_width or transformer_width"}


def _mlp(cfg: ml_collections.ConfigDict, num_classes: int, dtype: Any, seq_len: int) -> nn.Module:
  return MLP(hidden=tuple(cfg.hidden), num_classes=num_classes, dropout=cfg.dropout,
             dtype=dtype, remat=cfg.remat, kernel_init=KERNEL_INITS[cfg.kernel_init])


def _cnn(cfg: ml_collections.ConfigDict, num_classes: int, dtype: Any, seq_len: int) -> nn.Module:
  return CNN(features=tuple(cfg.features), dense=cfg.dense, num_classes=num_classes,
             dropout=cfg.conv_dropout, dense_dropout=cfg.dense_dropout,
             conv_impl=cfg.conv_impl, dtype=dtype, remat=cfg.remat,
             kernel_init=KERNEL_INITS[cfg.kernel_init])


def _resnet(cfg: ml_collections.ConfigDict, num_classes: int, dtype: Any,
            seq_len: int) -> nn.Module:
  return ResNet(depth=cfg.resnet_depth, width=cfg.resnet_width, num_classes=num_classes,
                bn_mode=cfg.bn_mode, bn_virtual_batch_size=cfg.bn_virtual_batch_size,
                conv_impl=cfg.conv_impl, dtype=dtype, remat=cfg.remat)


def _imagenet_resnet(cfg: ml_collections.ConfigDict, num_classes: int, dtype: Any,
                     seq_len: int) -> nn.Module:
  return ImageNetResNet(depth=cfg.imagenet_depth, width=cfg.imagenet_width,
                        num_classes=num_classes, bn_mode=cfg.bn_mode,
                        bn_virtual_batch_size=cfg.bn_virtual_batch_size,
                        conv_impl=cfg.conv_impl, dtype=dtype, remat=cfg.remat)


def _transformer(cfg: ml_collections.ConfigDict, num_classes: int, dtype: Any,
                 seq_len: int) -> nn.Module:
  return Transformer(vocab_size=num_classes, seq_len=seq_len, width=cfg.transformer_width,
                     depth=cfg.transformer_depth,
                     heads=cfg.heads, tied=cfg.tied_embedding, dropout=cfg.dropout,
                     dtype=dtype, remat=cfg.remat)


# name -> builder(config.model, num_classes, compute dtype, seq_len). Every model takes
# `dtype` (compute; parameters float32, logits float32) and `model.remat`; seq_len is
# the context length of a text dataset (data.seq_len), 0 for images.
MODELS: dict[str, Callable[[ml_collections.ConfigDict, int, Any, int], nn.Module]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "resnet": _resnet,
    "imagenet_resnet": _imagenet_resnet,
    "transformer": _transformer,
}
BATCH_NORM_MODELS = ("resnet", "imagenet_resnet")
SEQUENCE_MODELS = ("transformer",)  # take windows of tokens: data.name="text" only


def for_curvature(model: nn.Module) -> nn.Module:
  """The model with the convolution form a Hessian-vector product differentiates forward
  over reverse (`conv.curvature_impl`): the same parameters, values and gradients."""
  if not hasattr(model, "conv_impl"):
    return model
  return model.clone(conv_impl=conv.curvature_impl(model.conv_impl))


def has_batch_norm(cfg: ml_collections.ConfigDict) -> bool:
  """The model keeps running batch statistics (and needs unpadded training batches)."""
  return cfg.name in BATCH_NORM_MODELS


def default_config() -> ml_collections.ConfigDict:
  """Fields for every registered model; each model reads the ones it needs."""
  return ml_collections.ConfigDict(dict(
      name="mlp",
      hidden=(512, 512),  # mlp
      features=(32, 64),  # cnn conv widths
      dense=128,  # cnn dense width
      dropout=0.0,  # mlp: after each hidden layer; transformer: after attention and MLP
      conv_dropout=0.25,  # cnn: after the pool
      dense_dropout=0.5,  # cnn: after the dense layer
      conv_impl="auto",  # kernel gradient: "im2col" matmul on CPU, "xla" elsewhere
      kernel_init="lecun_normal",  # mlp, cnn: or "glorot_uniform" (Keras' default)
      remat=False,  # recompute each block's activations in the backward pass
      # Shallue et al.'s ResNet-8 at width 16: layers 6n + 2 (8, 20, 32, 56), filters of
      # the first stage (then 2x, 4x).
      resnet_depth=8,
      resnet_width=16,
      # imagenet_resnet: He et al.'s ImageNet ResNet v1.5 of 18, 34, 50 or 101 layers, and
      # the stem's and first stage's filters (64; then 2x, 4x, 8x).
      imagenet_depth=50,
      imagenet_width=64,
      # A byte-level Transformer: blocks, and the model (embedding) width.
      transformer_depth=2,
      transformer_width=128,
      heads=4,  # transformer: attention heads (divide the width)
      tied_embedding=True,  # transformer: output logits from the token embedding
      bn_mode="device",  # resnets: batch statistics per "device" share, "virtual", "sync"
      bn_virtual_batch_size=0,  # bn_mode="virtual": examples per statistics group
      bn_momentum=0.9,  # running averages: r <- m r + (1 - m) batch moment, per update
  ))


def validate(cfg: ml_collections.ConfigDict) -> None:
  """ConfigError naming the first invalid field of config.model."""
  if cfg.name not in MODELS:
    raise ConfigError("model.name", cfg.name, f"one of {sorted(MODELS)}")
  unknown = sorted(set(cfg) - set(default_config()))
  if unknown:
    field = unknown[0]
    raise ConfigError(f"model.{field}", cfg[field],
                      f"not a model field; {_RENAMED[field]} (each model has its own)"
                      if field in _RENAMED else "not a model field (a typo?)")
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
  if cfg.kernel_init not in KERNEL_INITS:
    raise ConfigError("model.kernel_init", cfg.kernel_init, f"one of {list(KERNEL_INITS)}")
  for field in ("resnet_depth", "resnet_width", "imagenet_width", "transformer_depth",
                "transformer_width"):
    if not isinstance(cfg[field], int) or cfg[field] < 1:
      raise ConfigError(f"model.{field}", cfg[field], "a positive integer")
  if cfg.name == "resnet" and (cfg.resnet_depth < 8 or (cfg.resnet_depth - 2) % 6):
    raise ConfigError("model.resnet_depth", cfg.resnet_depth,
                      "6n + 2 with n >= 1 (8, 20, 32, 56, ...)")
  if (not isinstance(cfg.imagenet_depth, int) or isinstance(cfg.imagenet_depth, bool)
      or cfg.imagenet_depth not in IMAGENET_DEPTHS):
    raise ConfigError("model.imagenet_depth", cfg.imagenet_depth,
                      f"one of {list(IMAGENET_DEPTHS)}")
  if cfg.name == "transformer" and (not isinstance(cfg.heads, int) or cfg.heads < 1
                                    or cfg.transformer_width % cfg.heads):
    raise ConfigError("model.heads", cfg.heads, "a positive number of heads dividing "
                      f"model.transformer_width={cfg.transformer_width}")
  if cfg.bn_mode not in batchnorm.MODES:
    raise ConfigError("model.bn_mode", cfg.bn_mode, f"one of {list(batchnorm.MODES)}")
  if cfg.bn_mode == "virtual" and (not isinstance(cfg.bn_virtual_batch_size, int)
                                   or cfg.bn_virtual_batch_size < 1):
    raise ConfigError("model.bn_virtual_batch_size", cfg.bn_virtual_batch_size,
                      "a positive number of examples with bn_mode='virtual'")
  if not 0.0 <= cfg.bn_momentum < 1.0:
    raise ConfigError("model.bn_momentum", cfg.bn_momentum, "a number in [0, 1)")


def build(cfg: ml_collections.ConfigDict, num_classes: int, dtype: str = "float32", *,
          seq_len: int = 0) -> nn.Module:
  """The model named by a validated `config.model`, computing in `dtype`."""
  return MODELS[cfg.name](cfg, num_classes, jnp.dtype(dtype), seq_len)
