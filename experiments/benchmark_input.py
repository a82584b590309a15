r"""How many ImageNet-sized JPEGs one CPU core decodes and augments per second.

  python experiments/benchmark_input.py [--config.n=200] [--config.scale=2]

200 synthetic photograph-like JPEGs (mean about 400 x 350, 100 kB, quality 90), one
thread: plain decode, the training view (sgdlab.data.jpeg.train_image: random-resized
crop to 224, flip) and the evaluation view (eval_image: shorter side 256, central 224),
for each JPEG decoder (Pillow, simplejpeg, OpenCV; one that is not installed is a row
saying so), with and without DCT-domain downscaling; images per CPU-second of the
thread and per wall second. It picked the decoder sgdlab.data.jpeg uses: Pillow, within
~5-15% of the fastest on the views. Then the same images as an ArrayRecord folder read
through sgdlab's training stream (grain threads parsing, decoding and cropping: the
images per second a host's cores deliver), and one ResNet-50 train step at k=8 on this
device (what it consumes). About 3 minutes on 2 CPU cores (more with
--config.scale=2 --config.n=100, images twice the size). The engines are
sgdlab.studies.input_speed and stream_speed.

  --config=experiments/benchmark_input.py:small   8 images, one round, Pillow and
      simplejpeg (seconds; what the tests run)
"""

from __future__ import annotations

import os

import ml_collections

from sgdlab import cli
from sgdlab.studies import stream_speed


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The benchmark's settings; variant "small" for the tests."""
  c = ml_collections.ConfigDict(dict(
      n=200,  # synthetic JPEGs
      seed=0,  # of their content
      quality=90,  # JPEG quality they are saved at
      scale=1.0,  # their sides, times ImageNet-like ones (2: the large tail, where the
      # DCT-domain downscaling pays)
      size=224,  # the crop's side (ResNet-50's input)
      resize=256,  # the evaluation view's shorter side before its central crop
      rounds=5,  # passes over the set per setting, order rotated
      decoders=("pillow", "simplejpeg", "opencv"),
      stream_threads=(1, 2),  # grain threads of sgdlab's training stream, each timed
      stream_k=32,  # its batch
      stream_batches=8,  # batches per timed stretch
      resnet_k=8,  # a ResNet-50 train step at this k on this device (0: not timed)
  ))
  if variant == "small":
    c.n, c.rounds, c.decoders = 8, 1, ("pillow", "simplejpeg")
    c.stream_threads, c.stream_k, c.stream_batches, c.resnet_k = (1,), 4, 1, 0
  return c


def main(argv: list[str]) -> None:
  del argv
  stream_speed.measure(cli.config())


if __name__ == "__main__":
  cli.define_config_flags(os.path.abspath(__file__))
  cli.main(main)
