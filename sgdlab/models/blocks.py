"""The blocks that `model.remat` recomputes: each layer with its activation, as one unit.

A block is a subclass of the layer it wraps, so its parameters keep the layer's names
('dense0/kernel', 'conv1/bias') with or without remat: checkpoints, layer tables and
the hand-written comparison loops see the same tree.

`apply_block(layer, x, remat)` keeps only the block's input and parameters for the
backward pass and recomputes the rest there. It is not `nn.remat` (`jax.checkpoint`):
XLA:CPU drops jax.checkpoint's optimization barriers early and merges the recomputation
back into the forward pass (an 8-layer MLP compiled to the same dots and the same temp
bytes with and without it), and even with CSE disabled its scheduler computes the
recomputation early. Here the recomputation reads its input through the cotangent
(x + 0 * g[0]), so no compiler can run it before the backward pass reaches the block:
the same gradients, bitwise, and the temp bytes of the rematerialized program.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgdlab.models.conv import Conv


class DenseReLU(nn.Dense):
  """relu(Dense(x))."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.relu(super().__call__(x))


class ConvReLU(Conv):
  """relu(Conv(x))."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.relu(super().__call__(x))


def _after(x: jax.Array, g: jax.Array) -> jax.Array:
  """x, made to depend on the cotangent g (adds an exact zero, unless g is not finite)."""
  return x + (g.reshape(-1)[0] * 0).astype(x.dtype)


def apply_block(layer: nn.Module, x: jax.Array, remat: bool) -> jax.Array:
  """layer(x); with remat, its activations are recomputed in the backward pass."""
  if not remat:
    return layer(x)
  pure = layer.clone(parent=None)  # for the backward pass, where no scope exists

  def forward(mdl, x):
    return mdl(x)

  def forward_saving_inputs(mdl, x):
    return mdl(x), (mdl.variables["params"], x)

  def backward(saved, g):
    params, x = saved
    _, vjp = jax.vjp(lambda p, x: pure.apply({"params": p}, x), params, _after(x, g))
    params_t, x_t = vjp(g)
    return {"params": params_t}, x_t

  return nn.custom_vjp(forward, forward_saving_inputs, backward)(layer, x)
