"""The large-batch papers' ImageNet recipes as config settings, for experiments/ to use.

`imagenet_resnet` is the workload they share: ResNet-50 v1.5 on ILSVRC-2012 read from
TFDS' array_record shards (`sgdlab.data.imagenet`), batch norm per device share, crops
of 224 that reach the device as uint8. `step_boundaries` turns a decay at epochs into
the updates optax counts, after a warmup (optim.build_schedule counts t from its end).
"""

from __future__ import annotations

from typing import Sequence

import ml_collections

IMAGENET_TRAIN = 1_281_167  # ILSVRC-2012 training images (TFDS imagenet2012 5.1.0)


def imagenet_resnet(config: ml_collections.ConfigDict, k: int, depth: int = 50,
                    folder: str = "") -> ml_collections.ConfigDict:
  """ResNet-`depth` on ImageNet at batch k: the model, the data and the epoch's shape."""
  config.model.name, config.model.imagenet_depth = "imagenet_resnet", depth
  config.model.bn_mode = "device"  # statistics of each device's share (32 in Goyal et al.)
  config.data.name, config.data.dir, config.data.pipeline = "imagenet2012", folder, "grain"
  config.data.image_size, config.data.read_threads, config.data.prefetch = 224, 32, 4
  config.batch_size, config.drop_remainder = k, True  # batch norm wants full batches
  config.eval_batch_size = 1000
  config.lr_decay, config.checkpoint_every_epochs = 0.0, 1
  return config


def step_boundaries(epochs: Sequence[int], warmup_epochs: int, k: int,
                    n_train: int = IMAGENET_TRAIN) -> tuple[int, ...]:
  """Updates (counted from the warmup's end) at which a step schedule decays."""
  steps = n_train // k
  return tuple((e - warmup_epochs) * steps for e in epochs)
