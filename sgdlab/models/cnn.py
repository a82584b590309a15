"""Keras' mnist_cnn: the convolutional model of the memory and conv-speed studies."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgdlab.models.blocks import ConvReLU, DenseReLU, apply_block


class CNN(nn.Module):
  """Keras' mnist_cnn shape: conv-conv-maxpool-dropout-dense-dropout-dense.

  Dropout is active only with train=True and then needs a 'dropout' rng, which the
  train step derives from (seed, step, device) so runs are reproducible. The layers
  are `nn.Conv`'s and `nn.max_pool`'s in values and parameters, written in the forms
  XLA:CPU trains fastest (models/conv.py; the pool's gradient without
  select-and-scatter: 16-27% of a step at k=32..256). dtype and remat as in `MLP`.
  """

  features: Sequence[int] = (32, 64)
  dense: int = 128
  num_classes: int = 10
  dropout: float = 0.25
  dense_dropout: float = 0.5
  conv_impl: str = "auto"
  dtype: Any = jnp.float32
  remat: bool = False
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()  # as in `MLP`

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if x.ndim == 2:  # flat input: treat as a one-channel square image if possible
      side = int(round(x.shape[1] ** 0.5))
      x = x.reshape((x.shape[0], side, side, 1))
    for i, f in enumerate(self.features):
      conv = ConvReLU(f, (3, 3), padding="VALID", impl=self.conv_impl, dtype=self.dtype,
                      kernel_init=self.kernel_init, name=f"conv{i}")
      x = apply_block(conv, x, self.remat)
    x = max_pool_2x2(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = x.reshape((x.shape[0], -1))
    x = apply_block(DenseReLU(self.dense, dtype=self.dtype, kernel_init=self.kernel_init,
                                 name="dense"), x, self.remat)
    x = nn.Dropout(self.dense_dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=self.kernel_init,
                    name="logits")(x).astype(jnp.float32)


def _windows(x: jnp.ndarray) -> list[jnp.ndarray]:
  """The four positions of every 2x2 window, in row-major window order."""
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2, :].reshape(b, h // 2, 2, w // 2, 2, c)
  return [x[:, :, i, :, j, :] for i in (0, 1) for j in (0, 1)]


@jax.custom_jvp
def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
  """2x2, stride-2 VALID max-pool: `nn.max_pool`'s values and gradient (all of it to
  the first maximum of a window, as select-and-scatter gives), computed elementwise,
  which XLA:CPU fuses; its select-and-scatter it does not. A JVP rule rather than a VJP
  rule: the gradient is its transpose, and forward-over-reverse Hessian-vector products
  (sgdlab.curvature) can differentiate that gradient again."""
  a, b, c, d = _windows(x)
  return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


@max_pool_2x2.defjvp
def _pool_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  m = max_pool_2x2(x)
  taken = jnp.zeros(m.shape, bool)
  out = jnp.zeros(m.shape, t.dtype)
  for v, tv in zip(_windows(x), _windows(t)):  # ties: the first maximum in window order
    first = (v == m) & ~taken
    taken = taken | first
    out = out + jnp.where(first, tv, jnp.zeros((), t.dtype))
  return m, out
