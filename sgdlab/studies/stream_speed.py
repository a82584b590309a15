"""sgdlab's ImageNet input end to end, against a ResNet-50 step on the same machine.

`stream_rate` writes synthetic ImageNet-sized JPEGs (`input_speed.synthetic_jpegs`) as
a plain ArrayRecord folder, opens a run's training stream over it exactly as training
does (`sgdlab.train.run.create_run`: grain's threads read records, parse them, decode
and crop by each example's draw) and times batches of k through `Stream.take`, for
each thread count. `resnet_step_seconds` times the compiled ResNet-50 train step at k
on this machine's device, so the two rates can be set side by side: a host keeps up
when its threads deliver what its devices consume.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Sequence

import jax
from array_record.python import array_record_module

from sgdlab import config as config_lib
from sgdlab.data import records
from sgdlab.studies import input_speed
from sgdlab.train import run as run_lib, step


def _write_folder(folder: str, images: Sequence[bytes]) -> None:
  for split, rows in (("train", images), ("validation", images[:8])):
    writer = array_record_module.ArrayRecordWriter(os.path.join(folder, f"{split}.array_record"),
                                                   "group_size:1")
    for i, image in enumerate(rows):
      writer.write(records.encode_example({"image": image, "label": i % 10}))
    writer.close()


def _config(folder: str, k: int, threads: int):
  c = config_lib.default_config()
  c.data.name, c.data.dir, c.data.pipeline, c.data.num_classes = (
      "array_record", folder, "grain", 10)
  c.data.read_threads, c.data.prefetch, c.batch_size = threads, 2 * threads, k
  c.model.hidden, c.num_epochs = (8,), 100
  return c


def stream_rate(n: int, k: int, threads: Sequence[int], batches: int) -> dict[int, float]:
  """Training images per second through sgdlab's stream, per thread count (median of
  three timed stretches of `batches` batches each, after one untimed batch)."""
  mesh = step.make_mesh(jax.devices()[:1])
  out = {}
  with tempfile.TemporaryDirectory() as folder:
    _write_folder(folder, input_speed.synthetic_jpegs(n))
    for t in threads:
      resolved = config_lib.resolve(_config(folder, k, t), n_devices=1)
      run = run_lib.create_run(resolved, mesh=mesh, compile_now=False)
      run.stream.take(1)
      times = []
      for _ in range(3):
        start = time.perf_counter()
        run.stream.take(batches)
        times.append(time.perf_counter() - start)
      out[t] = batches * k / statistics.median(times)
  return out


def resnet_step_seconds(k: int, dtype: str = "float32", rounds: int = 3) -> float:
  """Median seconds of one compiled ResNet-50 v1.5 train step (momentum) at k, 224x224."""
  from sgdlab.studies import imagenet_fit  # pylint: disable=g-import-not-at-top
  c = imagenet_fit.workload(k)
  c.dtype, c.data.pipeline, c.data.synthetic_n_train = dtype, "device", k
  c.data.synthetic_n_test = 8
  resolved = config_lib.resolve(c, n_devices=1)
  run = run_lib.create_run(resolved, mesh=step.make_mesh(jax.devices()[:1]),
                           compile_now=False)
  state = run.init_state()
  feed = run.feed(0, 0, 1)
  state, _ = run.advance(state, feed)  # compile
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    state, metrics = run.advance(state, feed)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure(config) -> list[str]:
  """experiments/benchmark_input.py: the decoders' table, then the stream's images per
  second per thread count and the ResNet-50 step's (resnet_k 0: not timed), printed."""
  c = config
  table = input_speed.measure(c)
  rates = stream_rate(c.n, c.stream_k, c.stream_threads, c.stream_batches)
  print(f"\nsgdlab's training stream (array_record, k={c.stream_k}, {c.stream_batches} "
        "batches a stretch, median of 3): images per second")
  for t, rate in rates.items():
    table.append(f"| stream | {t} thread(s) | {rate:,.0f} |")
    print(table[-1], flush=True)
  if c.resnet_k:
    seconds = resnet_step_seconds(c.resnet_k)
    table.append(f"| ResNet-50 step | k={c.resnet_k}, float32 | {seconds:.2f} s "
                 f"({c.resnet_k / seconds:,.1f} images/s) |")
    print(table[-1], flush=True)
  return table
