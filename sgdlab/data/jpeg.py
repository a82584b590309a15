"""Host-side JPEG decoding and the ImageNet input augmentations, one example at a time.

A streamed ImageNet pipeline (grain's worker threads) calls these per example: `decode`
(bytes to uint8 RGB pixels), `train_image` (Inception-style random-resized crop and a
horizontal flip; Szegedy et al. 2015, "Going deeper with convolutions", section 6, as
TF's `sample_distorted_bounding_box` and torchvision's `RandomResizedCrop` draw it) and
`eval_image` (shorter side to 256, central 224 crop; Krizhevsky et al. 2012, He et al.
2016). Each example's draws come from the generator its caller passes: sgdlab's stream
seeds it with the batch order's draw for that example, a function of (seed, epoch,
index) alone (`sgdlab.data.imagenet`); `example_rng` is such a generator for callers
without an order (the benchmark).

Decoding is Pillow's (libjpeg-turbo underneath, as simplejpeg's and OpenCV's):
experiments/benchmark_input.py on one core finds train_image and eval_image with it
within ~5-15% of the fastest decoder (plain decoding 15-30% behind simplejpeg), so it
costs no extra dependency. simplejpeg and OpenCV stay selectable (`decoder=`) so the benchmark
times these very functions with each. When a crop is shrunk by 2x or more, the JPEG is
decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg's scaled IDCT;
`Image.draft`), and the crop, drawn on the full-size coordinates, is mapped onto the
smaller picture. The result is still a function of the bytes and the draws alone; its
pixels differ from a full-size decode's by a few levels (the scaled IDCT is its own
low-pass). On ImageNet-sized images (mean 406 x 354) its gain is within the noise
(few crops shrink 2x); on images twice that size it gains ~10-30% (train) and ~40%
(eval): Huffman decoding, which it cannot shrink, remains.

Pixels are resized with Pillow's bilinear filter, which widens its triangle with the
shrink factor (antialiased, as torchvision's resize of a PIL image): plain bilinear
sampling at a 3x shrink aliases. It is ~30% of a train_image on one core. All
functions are pure in their arguments and keep no state, so any number of threads may
call them (Pillow releases the GIL while decoding and resizing).
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

DECODERS = ("pillow", "simplejpeg", "opencv")
DECODER = "pillow"  # by measurement (experiments/benchmark_input.py): see above
_SOI = b"\xff\xd8"
_SCALES = (8, 4, 2, 1)  # libjpeg's power-of-two DCT-domain reductions
# The last word of every example's seed: example_rng(seed, 0, 0) is then not the stream
# of np.random.default_rng(seed) (SeedSequence ignores trailing zero words), which the
# validation split and the synthetic sources draw from.
_TAG = 0x6A706567  # "jpeg"
_WORD = 2**32
# What Pillow's JPEG parser raises on corrupt or truncated data (its loader's truncation
# check is an OSError; markers it cannot parse surface as the others).
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError)


def _not_jpeg(reason: str) -> ValueError:
  return ValueError(f"not a JPEG: {reason}")


def _check_soi(data: bytes) -> None:
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise _not_jpeg(f"expected bytes, got {type(data).__name__}")
  if len(data) < 4:
    raise _not_jpeg(f"{len(data)} bytes")
  if bytes(data[:2]) != _SOI:
    raise _not_jpeg(f"starts with {bytes(data[:4]).hex()}, not the SOI marker ffd8")


def _open(data: bytes) -> Image.Image:
  """The header, parsed by Pillow (no pixels decoded yet)."""
  _check_soi(data)
  try:
    image = Image.open(io.BytesIO(data), formats=("JPEG", "MPO"))
  except _PIL_ERRORS as e:
    raise _not_jpeg(f"unreadable header ({e})") from None
  return image


def image_size(data: bytes) -> tuple[int, int]:
  """(height, width) from the JPEG's header, without decoding it."""
  width, height = _open(data).size
  return height, width


def _reduction(shrink: float) -> int:
  """The largest DCT-domain reduction (8, 4, 2 or 1) that keeps every axis at least
  1/shrink of its full-size extent, i.e. never decodes fewer pixels than resize needs."""
  return next((s for s in _SCALES if s <= shrink), 1)


def _pillow(data: bytes, s: int) -> tuple[Image.Image, int]:
  image = _open(data)
  if s > 1:
    width, height = image.size
    # Pillow reduces by the largest power of two <= width // (width // s): s itself.
    if image.draft("RGB", (width // s, height // s)) is None:
      s = 1  # not drafted (never for a freshly opened JPEG): decoded at full size
  try:
    image.load()
  except _PIL_ERRORS as e:
    raise _not_jpeg(f"truncated or corrupt ({e})") from None
  return (image if image.mode == "RGB" else image.convert("RGB")), s


def _simplejpeg(data: bytes, s: int) -> np.ndarray:
  import simplejpeg  # pylint: disable=g-import-not-at-top
  _check_soi(data)
  try:
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    # The smallest of libjpeg-turbo's M/8 outputs that covers ceil(size / s) is 1/s.
    return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-height // s),
                                  min_width=-(-width // s), strict=True)
  except ValueError as e:
    raise _not_jpeg(f"truncated or corrupt ({e})") from None


def _opencv(data: bytes, s: int) -> np.ndarray:
  import cv2  # pylint: disable=g-import-not-at-top
  _check_soi(data)
  flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
          4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}[s]
  pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
  if pixels is None:  # OpenCV's answer to a truncated or corrupt JPEG
    raise _not_jpeg("truncated or corrupt (OpenCV decoded nothing)")
  return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


_ARRAYS = {"simplejpeg": _simplejpeg, "opencv": _opencv}


def _picture(data: bytes, decoder: str, s: int) -> tuple[Image.Image, int]:
  """The JPEG as an RGB PIL image of ceil(size / s') pixels per axis, and s' (= s)."""
  if decoder == "pillow":
    return _pillow(data, s)
  if decoder not in _ARRAYS:
    raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
  # A copy into Pillow's 4-byte layout; wrapping an RGBX array instead saves it but
  # then resizes 4 bands, not 3: no faster.
  return Image.fromarray(_ARRAYS[decoder](data, s)), s


def decode(data: bytes, *, decoder: str = DECODER) -> np.ndarray:
  """The JPEG's pixels, uint8 [H, W, 3] RGB; grayscale and CMYK JPEGs are converted
  (CMYK naively, without its colour profile, as Pillow's convert does: ImageNet's
  training set has 22 CMYK JPEGs). EXIF orientation is ignored, as ImageNet pipelines
  do. ValueError("not a JPEG: ...") for anything else (ImageNet's one PNG named .JPEG
  too), truncated files included: Pillow's loader refuses them unless a caller set
  PIL.ImageFile.LOAD_TRUNCATED_IMAGES; simplejpeg with strict=True; OpenCV returns
  nothing."""
  if decoder in _ARRAYS:
    return _ARRAYS[decoder](data, 1)
  return np.array(_picture(data, decoder, 1)[0])


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
  """The generator of one training example's augmentation draws in one epoch.

  A pure function of (seed, epoch, index in the dataset): the draws do not depend on how
  many devices, processes or worker threads share the work, in which order they reach
  the example, or whether the run resumed from a checkpoint mid-epoch, so runs that
  differ only in those see the same images. SeedSequence hashes the words (O'Neill's
  PCG seeding; numpy's default_rng) so that neighbouring triples give independent
  streams. Each must be in [0, 2**32): one word each, so distinct triples are distinct
  seeds (a larger int would spill into a second word and could collide)."""
  for name, value in (("seed", seed), ("epoch", epoch), ("index", index)):
    if not 0 <= int(value) < _WORD:
      raise ValueError(f"{name} must be in [0, 2**32), got {value}")
  return np.random.default_rng([int(seed), int(epoch), int(index), _TAG])


def crop_window(height: int, width: int, rng: np.random.Generator,
                scale: tuple[float, float] = (0.08, 1.0),
                ratio: tuple[float, float] = (3 / 4, 4 / 3),
                attempts: int = 10) -> tuple[int, int, int, int]:
  """(top, left, h, w) of an Inception-style random-resized crop of a height x width image.

  Szegedy et al. 2015 (section 6), as TF's sample_distorted_bounding_box and torchvision's
  RandomResizedCrop draw it: the crop's area is a fraction of the image's drawn uniformly
  from `scale`, its aspect ratio w / h log-uniformly from `ratio` (so r and 1/r are
  equally likely), and its corner uniformly over the positions where it fits. A draw
  that does not fit is drawn again, up to `attempts` times; then the central crop of the
  whole image, narrowed to the nearest ratio in range (an image of extreme aspect).
  """
  if height < 1 or width < 1:
    raise ValueError(f"image must be at least 1x1, got {height}x{width}")
  if not 0 < scale[0] <= scale[1] <= 1:
    raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
  if not 0 < ratio[0] <= ratio[1]:
    raise ValueError(f"ratio must satisfy 0 < low <= high, got {ratio}")
  area = height * width
  log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(attempts):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_low, log_high))
    w = round(math.sqrt(target * aspect))
    h = round(math.sqrt(target / aspect))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  aspect = width / height
  h, w = height, width
  if aspect < ratio[0]:  # too tall: keep the width, shorten to the lowest ratio
    h = min(height, max(1, round(width / ratio[0])))
  elif aspect > ratio[1]:  # too wide: keep the height, narrow to the highest ratio
    w = min(width, max(1, round(height * ratio[1])))
  return (height - h) // 2, (width - w) // 2, h, w


def _resized(decoded: tuple[Image.Image, int], box: tuple[float, float, float, float],
             size: int) -> Image.Image:
  """The full-size box (left, top, right, bottom) of a (picture, s) decoded at 1/s,
  resized to size x size. Pixels just outside the box feed the filter as they would in
  a resize of the whole image."""
  picture, s = decoded
  left, top, right, bottom = (c / s for c in box)
  box = (left, top, min(right, picture.width), min(bottom, picture.height))  # float error
  return picture.resize((size, size), Image.Resampling.BILINEAR, box=box)


def train_image(data: bytes, size: int, rng: np.random.Generator, *,
                decoder: str = DECODER, reduce: bool = True) -> np.ndarray:
  """A training view: `crop_window`'s crop resized to size x size, flipped left-right
  with probability 1/2 (Krizhevsky et al. 2012); uint8 [size, size, 3].

  The draws are, in order, crop_window's and one uniform for the flip, all from `rng`
  (one example's: `example_rng`). The crop is drawn on the full image's size (read from
  the header); with `reduce`, the JPEG is decoded at the largest DCT-domain reduction
  that still leaves the crop at least `size` pixels on each side."""
  height, width = image_size(data)
  top, left, h, w = crop_window(height, width, rng)
  flip = rng.random() < 0.5
  s = _reduction(min(h, w) / size) if reduce else 1
  out = _resized(_picture(data, decoder, s), (left, top, left + w, top + h), size)
  if flip:
    out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return np.array(out)


def eval_window(height: int, width: int, size: int, resize: int
                ) -> tuple[float, float, float, float]:
  """The full-size box (left, top, right, bottom) that becomes the central size x size
  crop once the shorter side is resized to `resize` (the longer one to int(resize *
  long / short), as torchvision's Resize; the crop's corner rounded as CenterCrop)."""
  if resize < size:
    raise ValueError(f"resize must be >= size, got resize={resize} < size={size}")
  short = min(height, width)
  new_h = resize if height == short else int(resize * height / short)
  new_w = resize if width == short else int(resize * width / short)
  top, left = round((new_h - size) / 2), round((new_w - size) / 2)
  fy, fx = height / new_h, width / new_w  # full-size pixels per resized pixel
  return left * fx, top * fy, (left + size) * fx, (top + size) * fy


def eval_image(data: bytes, size: int, resize: int, *, decoder: str = DECODER,
               reduce: bool = True) -> np.ndarray:
  """The evaluation view: shorter side resized to `resize` (256 for size 224), then the
  central size x size crop; deterministic; uint8 [size, size, 3]. Only the crop's
  pixels are resized, which is the same as resizing the whole image and then cropping.
  ValueError when resize < size (the crop would not fit)."""
  height, width = image_size(data)
  box = eval_window(height, width, size, resize)
  s = _reduction(min(height, width) / resize) if reduce else 1
  return np.array(_resized(_picture(data, decoder, s), box, size))
