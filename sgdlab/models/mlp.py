"""The dense network of the classic Keras MNIST runs."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from sgdlab.models.blocks import DenseReLU, apply_block


class MLP(nn.Module):
  """Dense ReLU network on the flattened input (the classic 784-512-512-10).

  dtype is the compute dtype (bfloat16: bf16 matmuls); parameters stay float32 and
  the logits come back float32, so the loss and softmax are float32 either way.
  kernel_init: lecun_normal (Flax's default) or glorot_uniform (Keras', where the
  classic runs come from); biases start at zero in both.
  """

  hidden: Sequence[int] = (512, 512)
  num_classes: int = 10
  dropout: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden):
      x = apply_block(DenseReLU(width, dtype=self.dtype, kernel_init=self.kernel_init,
                                   name=f"dense{i}"), x, self.remat)
      if self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=self.kernel_init,
                    name="logits")(x).astype(jnp.float32)
