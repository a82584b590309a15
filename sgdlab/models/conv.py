"""A 2-D convolution whose gradients take the forms XLA:CPU runs fast.

XLA:CPU computes a convolution's kernel gradient through a generic path: measured
22-24 GFLOP/s for 128 x 26x26x32 -> 64 channels, 3x3, against 287 GFLOP/s for a
square matmul, and 60x slower again inside a `lax.scan` body (7.4 s per call), which
is where sgdlab's epoch runs it. The kernel gradient is a sum over examples of
patches^T @ output-gradient, so it is written here as that matmul, over chunks of the
batch small enough (`_CHUNK_BYTES`) that each chunk's patch matrix stays in cache:
70-97 GFLOP/s, the same inside a scan as outside. The input gradient is written as a
forward convolution of the dilated output gradient: XLA's own transpose form runs 4x
slower inside a scan, this one not; it goes over batch chunks where the runtime's
im2col buffer for it would be large. The forward pass is XLA's. `impl="auto"` takes
these forms on CPU only; accelerators keep XLA's (cuDNN's) gradients. Figures:
experiments/benchmark_conv.py.

A custom VJP cannot be differentiated forward, and a Hessian-vector product is cheapest
forward over reverse (Pearlmutter 1994), so curvature uses "im2col_jvp": the same forms,
written as a JVP rule whose tangent is linear in plain JAX operations, so that JAX's own
transposes of it are the two forms above (`curvature_impl`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

IMPLS = ("auto", "xla", "im2col", "im2col_jvp")
_DIMS = ("NHWC", "HWIO", "NHWC")
# A chunk's patch matrix; 2-8 MiB measured equally fast (cb=4..16 images of 648 KiB).
_CHUNK_BYTES = 6 << 20
# The im2col buffer XLA:CPU may build per input-gradient convolution (see
# chunked_input_grad); 128 MiB keeps k <= 64-128 of the Keras CNN in one piece.
_DX_CHUNK_BYTES = 128 << 20

Padding = str | Sequence[tuple[int, int]]


def resolve_impl(impl: str) -> str:
  """"xla" or "im2col" for the backend being compiled for."""
  if impl not in IMPLS:
    raise ValueError(f"conv impl must be one of {IMPLS}, got {impl!r}")
  if impl == "auto":
    return "im2col" if jax.default_backend() == "cpu" else "xla"
  return impl


def curvature_impl(impl: str) -> str:
  """The impl a Hessian-vector product differentiates forward over reverse: "im2col"
  becomes "im2col_jvp" (same values and gradients); XLA's convolution stays itself."""
  return "im2col_jvp" if resolve_impl(impl) == "im2col" else resolve_impl(impl)


def explicit_padding(padding: Padding, in_shape: Sequence[int], window: Sequence[int],
                     strides: Sequence[int]) -> tuple[tuple[int, int], ...]:
  """Low/high padding per spatial dim, as XLA resolves "SAME" and "VALID"."""
  if not isinstance(padding, str):
    return tuple((int(lo), int(hi)) for lo, hi in padding)
  return tuple(lax.padtype_to_pads(in_shape, window, strides, padding))


def _xla_conv(x, kernel, strides, padding):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DIMS)


def _patches(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
             out_hw: tuple[int, int]) -> jax.Array:
  """[B, Ho, Wo, kh*kw*C] from an already padded x, in HWIO's (kh, kw, C) order."""
  (kh, kw), (sh, sw), (ho, wo) = window, strides, out_hw
  cols = [x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
          for i in range(kh) for j in range(kw)]
  return jnp.concatenate(cols, axis=-1)


def _chunk_size(batch: int, most: int) -> int:
  """The largest divisor of batch up to `most`, unless padding to a multiple of `most`
  wastes less than half a chunk's work (a prime batch)."""
  most = max(1, min(batch, most))
  divisor = max(d for d in range(1, most + 1) if batch % d == 0)
  return divisor if 2 * divisor >= most else most


def _in_chunks(a: jax.Array, chunk: int) -> jax.Array:
  """[n, chunk, ...]: the batch padded with zero examples to a multiple of chunk."""
  n = -(-a.shape[0] // chunk)
  a = jnp.pad(a, ((0, n * chunk - a.shape[0]),) + ((0, 0),) * (a.ndim - 1))
  return a.reshape(n, chunk, *a.shape[1:])


def im2col_kernel_grad(x: jax.Array, dy: jax.Array, window: tuple[int, int],
                       strides: tuple[int, int], padding: tuple[tuple[int, int], ...]
                       ) -> jax.Array:
  """d loss / d kernel [kh, kw, C, F] of a conv, given its input x and output grad dy.

  Summed over batch chunks in a scan: a whole-batch patch matrix would be 9x the
  input (1.3 GiB at k=2048 for the Keras CNN) and runs at half the speed.
  """
  b, c, f = x.shape[0], x.shape[-1], dy.shape[-1]
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  out_hw = dy.shape[1:3]
  per_example = out_hw[0] * out_hw[1] * window[0] * window[1] * c * x.dtype.itemsize
  chunk = _chunk_size(b, _CHUNK_BYTES // max(per_example, 1))
  xs, dys = _in_chunks(x, chunk), _in_chunks(dy, chunk)  # zero examples add nothing
  n = xs.shape[0]

  def add_chunk(acc, xd):
    xc, dc = xd
    p = _patches(xc, window, strides, out_hw).reshape(-1, window[0] * window[1] * c)
    g = lax.dot_general(dc.reshape(-1, f), p, (((0,), (0,)), ((), ())),
                        preferred_element_type=jnp.float32)
    return acc + g, None

  acc = jnp.zeros((f, window[0] * window[1] * c), jnp.float32)
  if n == 1:
    g = add_chunk(acc, (xs[0], dys[0]))[0]
  else:
    g = lax.scan(add_chunk, acc, (xs, dys))[0]
  return g.T.reshape(window[0], window[1], c, f)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _im2col_conv(x, kernel, strides, padding):
  return _xla_conv(x, kernel, strides, padding)


def _im2col_fwd(x, kernel, strides, padding):
  return _xla_conv(x, kernel, strides, padding), (x, kernel)


def input_grad(dy: jax.Array, kernel: jax.Array, in_hw: Sequence[int],
               strides: tuple[int, int], padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """d loss / d x as a plain forward convolution of the dilated, padded dy with the
  flipped kernel. Same values as XLA's transpose; XLA:CPU runs its own transpose form
  (a convolution with lhs dilation) 4x slower inside a scan body, this one not."""
  cfg = [(0, 0, 0)]
  for size, k, s, (lo, hi), o in zip(in_hw, kernel.shape[:2], strides, padding, dy.shape[1:3]):
    rem = size + lo + hi - ((o - 1) * s + k)  # padded rows no window reaches
    cfg.append((k - 1 - lo, k - 1 - hi + rem, s - 1))
  cfg.append((0, 0, 0))
  dyp = lax.pad(dy, jnp.zeros((), dy.dtype), cfg)
  flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
  return _xla_conv(dyp, flipped, (1, 1), ((0, 0), (0, 0)))


def chunked_input_grad(dy: jax.Array, kernel: jax.Array, in_hw: Sequence[int],
                       strides: tuple[int, int], padding: tuple[tuple[int, int], ...]
                       ) -> jax.Array:
  """`input_grad` over batch chunks when the whole batch's convolution would make
  XLA:CPU build a large im2col buffer (measured: 1.6 GiB for the Keras CNN's conv1 at
  k=1024): at most `_DX_CHUNK_BYTES` of it per chunk, at 1.0-1.4x the time."""
  b = dy.shape[0]
  per_example = (in_hw[0] * in_hw[1] * kernel.shape[0] * kernel.shape[1] * kernel.shape[3]
                 * dy.dtype.itemsize)
  chunk = _chunk_size(b, _DX_CHUNK_BYTES // max(per_example, 1))
  if chunk >= b:
    return input_grad(dy, kernel, in_hw, strides, padding)
  dx = lax.map(lambda d: input_grad(d, kernel, in_hw, strides, padding), _in_chunks(dy, chunk))
  return dx.reshape(-1, *dx.shape[2:])[:b]


def _im2col_bwd(strides, padding, res, dy):
  x, kernel = res
  dx = chunked_input_grad(dy, kernel, x.shape[1:3], strides, padding)
  dk = im2col_kernel_grad(x, dy, kernel.shape[:2], strides, padding)
  return dx, dk.astype(kernel.dtype)


_im2col_conv.defvjp(_im2col_fwd, _im2col_bwd)


def _kernel_linear(x, dk, strides, padding, out_hw):
  """conv(x, dk) as patches @ dk over `im2col_kernel_grad`'s batch chunks: linear in dk,
  and JAX's transpose of it is that function's chunked patches^T @ dy."""
  b, f, window = x.shape[0], dk.shape[-1], dk.shape[:2]
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  per_example = out_hw[0] * out_hw[1] * window[0] * window[1] * x.shape[-1] * x.dtype.itemsize
  chunk = _chunk_size(b, _CHUNK_BYTES // max(per_example, 1))
  matrix = dk.reshape(-1, f)

  def one(xc):
    p = _patches(xc, window, strides, out_hw)
    return lax.dot_general(p, matrix, (((3,), (0,)), ((), ())))

  xs = _in_chunks(x, chunk)
  y = one(xs[0])[None] if xs.shape[0] == 1 else lax.map(one, xs)
  return y.reshape(-1, *y.shape[2:])[:b]


def _input_linear(dx, kernel, strides, padding, out_hw):
  """conv(dx, kernel) as a stride-1 convolution subsampled: linear in dx, and JAX's
  transpose of it is `input_grad`'s form (dilate, then a plain convolution), over
  `chunked_input_grad`'s batch chunks."""
  (sh, sw), (ho, wo) = strides, out_hw

  def one(d):
    y = _xla_conv(d, kernel, (1, 1), padding)
    return y[:, :sh * (ho - 1) + 1:sh, :sw * (wo - 1) + 1:sw]

  b, (h, w) = dx.shape[0], dx.shape[1:3]
  per_example = h * w * kernel.shape[0] * kernel.shape[1] * kernel.shape[3] * dx.dtype.itemsize
  chunk = _chunk_size(b, _DX_CHUNK_BYTES // max(per_example, 1))
  if chunk >= b:
    return one(dx)
  y = lax.map(one, _in_chunks(dx, chunk))
  return y.reshape(-1, *y.shape[2:])[:b]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _jvp_conv(x, kernel, strides, padding):
  return _xla_conv(x, kernel, strides, padding)


def _jvp_conv_rule(strides, padding, primals, tangents):
  """Symbolic zeros: the image's tangent is zero, and its convolution is skipped."""
  (x, kernel), (dx, dk) = primals, tangents
  y = _jvp_conv(x, kernel, strides, padding)
  dy = jnp.zeros_like(y)
  if not isinstance(dx, jax.custom_derivatives.SymbolicZero):
    dy = dy + _input_linear(dx, kernel, strides, padding, y.shape[1:3])
  if not isinstance(dk, jax.custom_derivatives.SymbolicZero):
    dy = dy + _kernel_linear(x, dk, strides, padding, y.shape[1:3])
  return y, dy.astype(y.dtype)


_jvp_conv.defjvp(_jvp_conv_rule, symbolic_zeros=True)


def conv2d(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1),
           padding: Padding = "VALID", impl: str = "auto") -> jax.Array:
  """NHWC x HWIO convolution; the values equal XLA's, and so do the gradients (to
  float summation order), whichever `impl` computes the kernel gradient."""
  strides = tuple(int(s) for s in strides)
  pads = explicit_padding(padding, x.shape[1:3], kernel.shape[:2], strides)
  impl = resolve_impl(impl)
  if impl == "xla":
    return _xla_conv(x, kernel, strides, pads)
  if impl == "im2col_jvp":
    return _jvp_conv(x, kernel, strides, pads)
  return _im2col_conv(x, kernel, strides, pads)


class Conv(nn.Module):
  """`nn.Conv`'s parameters ('kernel' HWIO, 'bias') and values, with `conv2d`'s
  gradient: a drop-in that keeps checkpoints and layer tables unchanged."""

  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: Padding = "VALID"
  use_bias: bool = True
  impl: str = "auto"
  dtype: Any = None
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (*self.kernel_size, x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
    dtype = self.dtype or x.dtype
    y = conv2d(x.astype(dtype), kernel.astype(dtype), self.strides, self.padding, self.impl)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(dtype)
    return y
