"""The input-speed benchmark (experiments/benchmark_input.py): its small variant runs,
and a decoder that is not installed is a row saying so. No speed is asserted."""

import numpy as np
import pytest

from conftest import experiment
from sgdlab.data import jpeg
from sgdlab.studies import input_speed, stream_speed


def _rate(cell):
  return float(cell.split()[0].replace(",", ""))


def test_the_small_variant_reports_every_task_for_every_installed_decoder():
  config = experiment("benchmark_input").get_config("small")
  table = stream_speed.measure(config)
  (stream,) = [r for r in table if r.startswith("| stream |")]
  assert float(stream.split(" | ")[2].strip(" |").replace(",", "")) > 0
  for decoder in config.decoders:
    found = [r for r in table if r.startswith(f"| {decoder} |")]
    if not input_speed.installed(decoder):
      assert len(found) == 1 and "not installed" in found[0], found
      continue
    (plain,), (reduced,) = [[r for r in found if f"| {x} |" in r] for x in ("no", "yes")]
    assert all(_rate(c) > 0 for c in plain.strip("| ").split(" | ")[2:]), plain
    assert reduced.split(" | ")[2] == "-"  # decode has no downscaled form
    assert all(_rate(c) > 0 for c in reduced.strip("| ").split(" | ")[3:]), reduced


def test_a_decoder_that_is_not_installed_is_a_row_saying_so(monkeypatch):
  monkeypatch.setattr(input_speed, "installed", lambda d: d == "pillow")
  rates = input_speed.measure_decoders(input_speed.synthetic_jpegs(2), size=32, resize=40,
                                       rounds=1, decoders=("pillow", "opencv"))
  assert rates[("opencv", False)] is None and rates[("opencv", True)] is None
  rows = input_speed.rows(rates)
  assert len(rows) == 3 and "not installed (pip install opencv-python-headless)" in rows[2]


def test_synthetic_jpegs_are_imagenet_sized_photograph_like_and_reproducible():
  images = input_speed.synthetic_jpegs(20, seed=3)
  assert images == input_speed.synthetic_jpegs(20, seed=3)
  sizes = np.array([jpeg.image_size(d) for d in images])
  assert sizes.mean(axis=0) == pytest.approx([354.0, 406.4])  # (height, width)
  per_pixel = np.mean([len(d) / (h * w) for d, (h, w) in zip(images, sizes)])
  assert 0.4 < per_pixel < 1.0  # bytes a pixel, as ImageNet's photographs
  assert jpeg.decode(images[0]).shape == (375, 500, 3)
  big = input_speed.synthetic_jpegs(1, scale=2)[0]
  assert jpeg.image_size(big) == (750, 1000)
