"""How many ImageNet-sized JPEGs one core decodes and augments per second, per decoder.

The work is sgdlab.data.jpeg's own functions, called as a streamed pipeline calls them
(one example at a time, on one thread): `decode`, `train_image(size)` with each
example's `example_rng`, and `eval_image(size, resize)`, each with Pillow, simplejpeg
and OpenCV decoding (all three libjpeg-turbo), with and without DCT-domain downscaling.
Every setting processes the whole set once per round, order rotated every round so that
load from other processes falls on all alike; a cell is the median over rounds.

The images are synthetic (`synthetic_jpegs`): ImageNet-like sizes (about 400 x 350 on
average, 250 to 800 pixels a side) and photograph-like content, a smooth random field
at three scales plus pixel noise, saved by Pillow at quality 90 with 4:2:0 chroma.
"""

from __future__ import annotations

import importlib.util
import io
import os
import statistics
import time
from typing import Callable, Sequence

import ml_collections
import numpy as np
from PIL import Image

from sgdlab.data import jpeg
from sgdlab.studies import bench

# (width, height), cycled: mean 406 x 354, as ImageNet's typical photographs.
SIZES = ((500, 375), (375, 500), (500, 333), (333, 500), (800, 600), (400, 300),
         (300, 225), (350, 263), (256, 256), (250, 188))
_MODULES = {"pillow": "PIL", "simplejpeg": "simplejpeg", "opencv": "cv2"}
_PIP = {"pillow": "pillow", "simplejpeg": "simplejpeg", "opencv": "opencv-python-headless"}


def _field(rng: np.random.Generator, width: int, height: int, cells: int, sd: float
           ) -> np.ndarray:
  """A smooth random RGB field: Gaussian noise on a coarse grid, bicubic-upsampled."""
  grid = rng.normal(0.0, sd, (max(2, height // cells), max(2, width // cells), 3))
  channels = [np.asarray(Image.fromarray(grid[..., c].astype(np.float32)).resize(
      (width, height), Image.Resampling.BICUBIC)) for c in range(3)]
  return np.stack(channels, axis=-1)


def synthetic_jpegs(n: int, seed: int = 0, quality: int = 90, scale: float = 1.0
                    ) -> list[bytes]:
  """n JPEGs of SIZES (sides times `scale`) in turn, photograph-like: smooth random
  fields over 64, 8 and 2 pixels, and pixel noise: about 0.65 bytes a pixel, 100 kB per
  image at scale 1 (ImageNet's training JPEGs average about 110 kB)."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    width, height = (round(scale * x) for x in SIZES[i % len(SIZES)])
    pixels = (128 + _field(rng, width, height, 64, 50) + _field(rng, width, height, 8, 20)
              + _field(rng, width, height, 2, 40) + rng.normal(0.0, 10.0, (height, width, 3)))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        buffer, "JPEG", quality=quality)
    out.append(buffer.getvalue())
  return out


def installed(decoder: str) -> bool:
  """Whether `decoder`'s library imports here."""
  return importlib.util.find_spec(_MODULES[decoder]) is not None


def _tasks(images: Sequence[bytes], decoder: str, reduce: bool, size: int, resize: int
           ) -> dict[str, Callable[[], None]]:
  """One pass over the images for each of decode, train_image and eval_image."""
  def decode_all():
    for data in images:
      jpeg.decode(data, decoder=decoder)

  def train_all():
    for i, data in enumerate(images):
      jpeg.train_image(data, size, jpeg.example_rng(0, 0, i), decoder=decoder, reduce=reduce)

  def eval_all():
    for data in images:
      jpeg.eval_image(data, size, resize, decoder=decoder, reduce=reduce)

  tasks = {"train": train_all, "eval": eval_all}
  return tasks if reduce else {"decode": decode_all, **tasks}


def _single_threaded(decoders: Sequence[str]) -> None:
  if "opencv" in decoders and installed("opencv"):
    import cv2  # pylint: disable=g-import-not-at-top
    cv2.setNumThreads(1)  # per core, as the other two: no thread pool in cvtColor


def measure_decoders(images: Sequence[bytes], size: int = 224, resize: int = 256,
                     rounds: int = 3, decoders: Sequence[str] = jpeg.DECODERS
                     ) -> dict[tuple[str, bool], dict[str, tuple[float, float]] | None]:
  """(per CPU-second of the thread, per wall second) images, median over rounds, of each
  task, for each (decoder, DCT downscaling) setting; None for a decoder not installed.
  The thread's CPU time is the steadier on a shared machine; wall time is what a core
  of one's own would give only when nothing else runs."""
  _single_threaded(decoders)
  settings = [(d, r) for d in decoders for r in (False, True)]
  calls = {(d, r, name): fn for d, r in settings if installed(d)
           for name, fn in _tasks(images, d, r, size, resize).items()}
  for fn in calls.values():
    fn()  # warm-up: imports, caches, page faults
  seconds: dict[tuple[str, bool, str], list[tuple[float, float]]] = {k: [] for k in calls}
  for r in range(rounds):
    for key in bench.turn_order(list(calls), r, "rotate"):
      cpu, wall = time.thread_time(), time.perf_counter()
      calls[key]()
      seconds[key].append((time.thread_time() - cpu, time.perf_counter() - wall))
  rate = lambda t, i: len(images) / statistics.median(x[i] for x in t)
  return {(d, r): ({name: (rate(t, 0), rate(t, 1)) for (d2, r2, name), t in seconds.items()
                    if (d2, r2) == (d, r)} if installed(d) else None) for d, r in settings}


def rows(rates: dict[tuple[str, bool], dict[str, tuple[float, float]] | None]) -> list[str]:
  """The table's rows: decoder, DCT downscaling, then images/s of each task, per CPU
  second (per wall second)."""
  out = []
  for (decoder, reduce), cells in rates.items():
    if cells is None:
      if not reduce:
        out.append(f"| {decoder} | - | not installed (pip install {_PIP[decoder]}) | - | - |")
      continue
    values = [f"{cells[t][0]:,.0f} ({cells[t][1]:,.0f})" if t in cells else "-"
              for t in ("decode", "train", "eval")]
    out.append(f"| {decoder} | {'yes' if reduce else 'no'} | " + " | ".join(values) + " |")
  return out


def measure(config: ml_collections.ConfigDict) -> list[str]:
  """The benchmark a config describes (experiments/benchmark_input.py), printed."""
  c = config
  images = synthetic_jpegs(c.n, c.seed, c.quality, c.scale)
  pixels = [jpeg.image_size(d) for d in images]
  mean_h, mean_w = np.mean(pixels, axis=0)
  print(f"{c.n} synthetic JPEGs, mean {mean_w:.0f} x {mean_h:.0f}, "
        f"{np.mean([len(d) for d in images]) / 1e3:.0f} kB each (quality {c.quality}); "
        f"one thread on {bench.machine_description()}, load average "
        f"{os.getloadavg()[0]:.2f} at the start; {c.rounds} rounds, order rotated; "
        f"images per CPU-second of the thread (per wall second).")
  print(f"| decoder | DCT downscaling | decode /s | train_image({c.size}) /s | "
        f"eval_image({c.size}, {c.resize}) /s |")
  print("|---|---|---:|---:|---:|")
  table = rows(measure_decoders(images, c.size, c.resize, c.rounds, c.decoders))
  for row in table:
    print(row, flush=True)
  return table
