"""Batch normalization, the layer through which the batch size enters the model.

Three ways to take the statistics of a training batch (`model.bn_mode`):
  device   over each device's share of the batch (what pmap-style data parallelism
           gives by default; the statistics' batch size is k / n_devices)
  virtual  over groups of `bn_virtual_batch_size` examples of each device's share
           (ghost batch norm, Hoffer et al. 2017): a statistics batch size that does
           not change with k
  sync     over the whole global batch, all devices together (two all-reduces)
With gradient accumulation the statistics are those of each micro-batch, and with the
one-device noise-scale estimate those of each half: both are the batch the step sees.

Running averages are not updated inside the layer: in training it records the batch's
moments (collection "batch_moments"), and the train step averages them over devices
and micro-batches and moves the running averages ("batch_stats", in the TrainState)
once per optimizer update (`sgdlab.train.step`). Evaluation normalizes with the running
averages. Statistics and normalization are float32 whatever the compute dtype.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

MODES = ("device", "virtual", "sync")
AXIS = "data"  # the data-parallel mesh axis (sgdlab.train.step.DATA)


def _axis_size() -> int:
  """Devices in the data axis, or 1 outside the data-parallel step (e.g. a layer table)."""
  try:
    return jax.lax.axis_size(AXIS)
  except NameError:
    return 1


def _pmean(x: jax.Array) -> jax.Array:
  return x if _axis_size() == 1 else jax.lax.pmean(x, AXIS)


class BatchNorm(nn.Module):
  """y = scale * (x - mean) / sqrt(var + epsilon) + bias over all axes but the last."""

  mode: str = "device"
  virtual_batch_size: int = 0  # mode="virtual": examples per statistics group
  epsilon: float = 1e-5
  scale_init: Callable[..., Any] = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", self.scale_init, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    xf = x.astype(jnp.float32)
    if not train:  # (declared here only: a train step needs no running averages)
      running_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
      running_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
      y = (xf - running_mean.value) * jax.lax.rsqrt(running_var.value + self.epsilon)
    else:
      groups = xf.shape[0] // self.virtual_batch_size if self.mode == "virtual" else 1
      xg = xf.reshape(groups, xf.shape[0] // groups, *xf.shape[1:])
      axes = tuple(range(1, xg.ndim - 1))
      mean = jnp.mean(xg, axes, keepdims=True)
      if self.mode == "sync":  # two passes over all devices: the global batch's moments
        mean = _pmean(mean)
      var = jnp.mean(jnp.square(xg - mean), axes, keepdims=True)
      if self.mode == "sync":
        var = _pmean(var)
      y = ((xg - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(xf.shape)
      # The moments the running averages move toward: the mean over statistics groups.
      self.put_variable("batch_moments", "mean", jnp.mean(mean.reshape(groups, c), 0))
      self.put_variable("batch_moments", "var", jnp.mean(var.reshape(groups, c), 0))
    return (y * scale + bias).astype(x.dtype)
