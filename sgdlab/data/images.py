"""Image transforms on the host: antialiased resize, scaling to [0, 1], storage form."""

from __future__ import annotations

import numpy as np

_RESIZE_CHUNK_BYTES = 64 << 20  # float32 working set per resize chunk


def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] triangle-filter weights, widened when shrinking (antialiasing).

  Rows are normalised, so a constant image stays constant, also at the borders.
  """
  scale = n_in / n_out
  support = max(scale, 1.0)  # shrinking: average over the whole footprint, no aliasing
  centers = (np.arange(n_out) + 0.5) * scale - 0.5
  dist = np.abs(np.arange(n_in)[None, :] - centers[:, None]) / support
  w = np.maximum(0.0, 1.0 - dist)
  return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def resize(images: np.ndarray, size: int) -> np.ndarray:
  """Antialiased bilinear resize of [n, H, W, C] to [n, size, size, C] float32.

  Works in chunks of about 64 MiB, so uint8 inputs (even a memory map) of 512px images
  never become one full float32 copy. size 0, or the native square size, returns the
  images unchanged.
  """
  if images.ndim != 4:
    raise ValueError(f"resize wants [n, H, W, C] images, got shape {images.shape}")
  n, h, w, c = images.shape
  if size == 0 or (size == h and size == w):
    return images
  if size < 0:
    raise ValueError(f"resize size must be >= 0, got {size}")
  wh, ww = _linear_weights(h, size), _linear_weights(w, size)
  out = np.empty((n, size, size, c), np.float32)
  chunk = max(1, _RESIZE_CHUNK_BYTES // (4 * h * w * c))
  for start in range(0, n, chunk):
    x = np.asarray(images[start:start + chunk], np.float32).transpose(0, 3, 1, 2)
    y = wh @ x @ ww.T  # [b, C, size, size]: separable, so two small matmuls
    out[start:start + chunk] = y.transpose(0, 2, 3, 1)
  return out


def to_unit(images: np.ndarray, scale: float, size: int) -> np.ndarray:
  """A fresh float32 [n, H, W, C] copy in [0, 1]: resized first, while still small."""
  images = np.asarray(images)  # a plain view of a memory map
  if images.ndim == 3:
    images = images[..., None]
  out = resize(images, size)
  if out is images:
    out = images.astype(np.float32)
  if scale != 1.0:
    out /= np.float32(scale)  # division, not a reciprocal product: 255 / 255 is exactly 1
    np.clip(out, 0.0, 1.0, out=out)  # resampling rounding may overshoot by an ulp
  return out



def resizes(shape: tuple[int, ...], size: int) -> bool:
  """Whether `resize(images, size)` changes images of shape [H, W, ...]."""
  return bool(size) and tuple(shape[:2]) != (size, size)


def stored(images: np.ndarray, scale: float, size: int) -> tuple[np.ndarray, float]:
  """Images as the devices keep them, and the scale the step divides them by.

  uint8 pixels stay uint8 (a quarter of float32's bytes) unless resized: resampling
  makes values between the pixel levels, so resized images (and any other dtype)
  become float32 in [0, 1], scale 1.
  """
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype == np.uint8 and not resizes(images.shape[1:], size):
    return np.array(images), float(scale)  # a fresh copy, as to_unit gives
  return to_unit(images, scale, size), 1.0


def unit_table(scale: float) -> np.ndarray:
  """float32 [256]: what `to_unit` makes of each uint8 value at this scale.

  The devices scale stored pixels by looking them up here rather than dividing:
  XLA turns x / 255 into x * (1 / 255), which differs from the division in the last
  bit for 126 of the 256 values; a table gives the host's values bit for bit.
  """
  return to_unit(np.arange(256, dtype=np.uint8).reshape(256, 1, 1, 1), scale, 0).reshape(256)
