"""Host-side JPEG decoding and the ImageNet augmentations (sgdlab.data.jpeg)."""

import concurrent.futures
import importlib.util
import io
import math

import numpy as np
import pytest
from PIL import Image

from sgdlab.data import jpeg

_MODULES = {"pillow": "PIL", "simplejpeg": "simplejpeg", "opencv": "cv2"}
DECODERS = [pytest.param(d, marks=pytest.mark.skipif(
    importlib.util.find_spec(m) is None, reason=f"{m} not installed"))
            for d, m in _MODULES.items()]


def _encode(pixels: np.ndarray, mode: str | None = None, quality: int = 95) -> bytes:
  image = Image.fromarray(pixels)
  if mode:
    image = image.convert(mode)
  out = io.BytesIO()
  image.save(out, "JPEG", quality=quality)
  return out.getvalue()


def _smooth(height: int, width: int, period: float = 80.0) -> np.ndarray:
  """Smooth, everywhere different RGB content: slow waves in x and y."""
  y, x = np.mgrid[:height, :width].astype(np.float64)
  pixels = np.stack([128 + 100 * np.sin(x / period * 2 * np.pi),
                     128 + 100 * np.cos(y / period * 2 * np.pi),
                     128 + 80 * np.sin((x + y) / (1.5 * period) * 2 * np.pi)], axis=-1)
  return pixels.round().astype(np.uint8)


def _ramp(height: int, width: int) -> np.ndarray:
  """Red rises left to right (0..255), green top to bottom, blue constant."""
  y, x = np.mgrid[:height, :width].astype(np.float64)
  pixels = np.stack([x * 255 / (width - 1), y * 255 / (height - 1),
                     np.full_like(x, 100)], axis=-1)
  return pixels.round().astype(np.uint8)


@pytest.mark.parametrize("decoder", DECODERS)
def test_decode_gives_rgb_pixels_close_to_the_encoded_ones(decoder):
  pixels = _smooth(120, 160)
  for mode, expected in [(None, pixels), ("CMYK", pixels),
                         ("L", np.asarray(Image.fromarray(pixels).convert("L")))]:
    out = jpeg.decode(_encode(pixels, mode), decoder=decoder)
    assert out.shape == (120, 160, 3) and out.dtype == np.uint8, mode
    assert out.flags.writeable
    reference = expected if expected.ndim == 3 else expected[..., None]
    error = np.abs(out.astype(int) - reference).mean()
    assert error < 3, (mode, error)
    if mode == "L":
      assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def _not_jpegs() -> dict[str, bytes]:
  png = io.BytesIO()
  Image.fromarray(_smooth(16, 16)).save(png, "PNG")
  good = _encode(_smooth(64, 96))
  rng = np.random.default_rng(0)
  return {"png": png.getvalue(), "random": rng.bytes(5000), "empty": b"",
          "soi then garbage": b"\xff\xd8\xff" + rng.bytes(2000),
          "truncated half": good[:len(good) // 2], "truncated end": good[:-2],
          "header only": good[:600]}


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("name", list(_not_jpegs()))
def test_bytes_that_are_not_a_whole_jpeg_are_refused(decoder, name):
  data = _not_jpegs()[name]
  with pytest.raises(ValueError, match="^not a JPEG: "):
    jpeg.decode(data, decoder=decoder)
  with pytest.raises(ValueError, match="^not a JPEG: "):
    jpeg.train_image(data, 32, jpeg.example_rng(0, 0, 0), decoder=decoder)


def test_decode_refuses_what_is_not_bytes_and_unknown_decoders():
  with pytest.raises(ValueError, match="not a JPEG: expected bytes"):
    jpeg.decode("\xff\xd8 a string")
  with pytest.raises(ValueError, match="decoder must be one of"):
    jpeg.decode(_encode(_smooth(8, 8)), decoder="libjpeg")


def test_example_rng_is_a_function_of_seed_epoch_and_index_alone():
  draw = lambda *key: jpeg.example_rng(*key).random(4).tolist()
  assert draw(3, 1, 7) == draw(3, 1, 7)
  keys = [(3, 1, 7), (4, 1, 7), (3, 2, 7), (3, 1, 8), (0, 0, 0), (7, 1, 3), (1, 3, 7)]
  assert len({tuple(draw(*k)) for k in keys}) == len(keys)
  # Not the stream of the seed alone (which splits and synthetic sources draw from).
  assert draw(3, 0, 0) != np.random.default_rng(3).random(4).tolist()
  for bad in [(-1, 0, 0), (0, 2**32, 0), (0, 0, -5)]:
    with pytest.raises(ValueError, match="must be in"):
      jpeg.example_rng(*bad)


def _windows(height, width, n=4000, **kw):
  rng = np.random.default_rng(1)
  return np.array([jpeg.crop_window(height, width, rng, **kw) for _ in range(n)])


def test_crop_windows_stay_inside_and_in_range_and_cover_the_crop_space():
  height, width = 400, 400
  top, left, h, w = _windows(height, width).T
  assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
  assert (top + h <= height).all() and (left + w <= width).all()
  area, log_ratio = h * w / (height * width), np.log(w / h)
  # Rounding w and h to pixels moves the area and ratio by under 1/30 here.
  assert area.min() > 0.08 * 0.97 and area.max() <= 1.0
  assert abs(log_ratio).max() < math.log(4 / 3) + 0.03
  assert area.min() < 0.085 and area.max() > 0.95  # the whole scale range is drawn
  assert log_ratio.min() < -math.log(4 / 3) + 0.02 and log_ratio.max() > math.log(4 / 3) - 0.02
  assert abs(log_ratio.mean()) < 0.01  # log-uniform: r and 1/r equally likely
  for corner, room in [(top, height - h), (left, width - w)]:
    spare = room > 50
    position = corner[spare] / room[spare]  # uniform over the places the crop fits
    assert position.min() < 0.02 and position.max() > 0.98 and abs(position.mean() - 0.5) < 0.03


@pytest.mark.parametrize("height,width,expected", [(1000, 20, (486, 0, 27, 20)),
                                                   (20, 1000, (0, 486, 20, 27)),
                                                   (1, 1, (0, 0, 1, 1))])
def test_an_image_no_draw_fits_gets_the_central_crop_clamped_to_the_ratio(height, width,
                                                                           expected):
  for top, left, h, w in _windows(height, width, n=50):
    assert (top, left, h, w) == expected
    assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05 or (h, w) == (1, 1)
  # A ratio range the image is inside of: the whole image.
  assert jpeg.crop_window(100, 110, np.random.default_rng(0), attempts=0) == (0, 0, 100, 110)


def test_crop_window_refuses_bad_ranges():
  rng = np.random.default_rng(0)
  for kw in [dict(scale=(0.5, 0.1)), dict(scale=(0.0, 1.0)), dict(scale=(0.1, 1.5)),
             dict(ratio=(2.0, 1.0)), dict(ratio=(0.0, 1.0))]:
    with pytest.raises(ValueError):
      jpeg.crop_window(100, 100, rng, **kw)


def test_train_image_is_a_function_of_its_rng_and_flips_half_the_time():
  data = _encode(_ramp(60, 80))
  outs = [jpeg.train_image(data, 32, jpeg.example_rng(0, 0, i)) for i in range(200)]
  assert all(o.shape == (32, 32, 3) and o.dtype == np.uint8 for o in outs)
  assert (jpeg.train_image(data, 32, jpeg.example_rng(0, 0, 5)) == outs[5]).all()
  assert not (jpeg.train_image(data, 32, jpeg.example_rng(0, 1, 5)) == outs[5]).all()
  flips = []
  for i, out in enumerate(outs):  # the draws in their documented order
    rng = jpeg.example_rng(0, 0, i)
    jpeg.crop_window(60, 80, rng)
    flips.append(rng.random() < 0.5)
    red = out[..., 0].astype(int).mean(axis=0)
    assert (red[0] > red[-1]) == flips[-1], i  # the ramp runs right to left when flipped
  assert 70 < sum(flips) < 130


def test_train_image_is_the_crop_resized_and_the_dct_downscaling_keeps_the_geometry():
  height, width, size = 768, 1024, 96
  data = _encode(_smooth(height, width, period=150))
  full = jpeg.decode(data)
  reduced = 0
  for i in range(12):
    rng = jpeg.example_rng(2, 0, i)
    top, left, h, w = jpeg.crop_window(height, width, rng)
    flip = rng.random() < 0.5
    crop = Image.fromarray(full[top:top + h, left:left + w])
    expected = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))
    expected = expected[:, ::-1] if flip else expected
    plain = jpeg.train_image(data, size, jpeg.example_rng(2, 0, i), reduce=False)
    fast = jpeg.train_image(data, size, jpeg.example_rng(2, 0, i))
    assert np.abs(plain.astype(int) - expected).mean() < 1.5, i
    assert np.abs(plain.astype(int) - fast).mean() < 4, i
    reduced += min(h, w) >= 2 * size
  assert reduced >= 3  # some crops were decoded at 1/2 scale or smaller


def test_eval_image_is_the_central_crop_of_the_resized_image():
  height, width = 300, 400
  data = _encode(_ramp(height, width))
  out = jpeg.eval_image(data, 224, 256)
  assert out.shape == (224, 224, 3) and out.dtype == np.uint8
  assert (jpeg.eval_image(data, 224, 256) == out).all()
  # Shorter side 300 -> 256, the longer 400 -> int(256 * 4 / 3) = 341; the crop's corner
  # is (16, 58) in the resized image, whose pixel j is at x = (j + 0.5) * 400 / 341 - 0.5.
  whole = Image.fromarray(jpeg.decode(data)).resize((341, 256), Image.Resampling.BILINEAR)
  assert np.abs(np.asarray(whole)[16:240, 58:282].astype(int) - out).max() <= 2
  for j in (0, 100, 223):
    x = (58 + j + 0.5) * width / 341 - 0.5
    assert abs(int(out[112, j, 0]) - x * 255 / (width - 1)) < 2.5, j
  for i in (0, 100, 223):
    y = (16 + i + 0.5) * height / 256 - 0.5
    assert abs(int(out[i, 112, 1]) - y * 255 / (height - 1)) < 2.5, i
  with pytest.raises(ValueError, match="resize must be >= size"):
    jpeg.eval_image(data, 224, 200)


def test_eval_image_of_portrait_small_and_large_images():
  for height, width in [(500, 333), (40, 30), (1200, 1000)]:
    data = _encode(_smooth(height, width))
    out = jpeg.eval_image(data, 64, 73)
    assert out.shape == (64, 64, 3), (height, width)
    plain = jpeg.eval_image(data, 64, 73, reduce=False)  # 1200 x 1000: 1/8 scale decode
    assert np.abs(plain.astype(int) - out).mean() < 4, (height, width)


def test_many_threads_give_what_one_does():
  data = [_encode(_smooth(90 + 10 * i, 120)) for i in range(4)]
  work = [(i % 4, i) for i in range(32)]
  run = lambda job: jpeg.train_image(data[job[0]], 48, jpeg.example_rng(0, 3, job[1]))
  alone = [run(job) for job in work]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    together = list(pool.map(run, work))
  assert all((a == b).all() for a, b in zip(alone, together))


@pytest.mark.parametrize("decoder", DECODERS)
def test_every_decoder_gives_the_views_pillow_gives(decoder):
  pixels = _smooth(300, 520)
  for mode in (None, "L", "CMYK"):
    data = _encode(pixels, mode)
    for reduce in (False, True):
      views = [jpeg.eval_image(data, 64, 80, decoder=d, reduce=reduce)
               for d in ("pillow", decoder)]
      views += [jpeg.train_image(data, 64, jpeg.example_rng(1, 0, 9), decoder=d,
                                 reduce=reduce) for d in ("pillow", decoder)]
      for pillow, other in (views[:2], views[2:]):
        assert other.shape == (64, 64, 3) and other.dtype == np.uint8
        # CMYK: libjpeg-turbo and Pillow round the conversion differently (by 1).
        assert np.abs(pillow.astype(int) - other).mean() < 1.5, (mode, reduce)
