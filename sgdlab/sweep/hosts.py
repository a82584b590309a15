"""One run across several processes (hosts): start-up, and who writes results.

`initialize()` wraps `jax.distributed.initialize`. With no explicit coordinator it lets
JAX detect the cluster (Cloud TPU pods, SLURM jobs, Kubernetes JobSets, Open MPI);
with `coordinator_address`, `num_processes` and `process_id` it joins the processes
named. After it, `jax.devices()` lists every process's devices and the trainer's
1-D mesh spans all of them: the global batch of every step is one array sharded over
all devices of all hosts.

How data reaches the devices: every process loads the dataset and places it on its
own devices (replicated); the compiled epoch gathers each global batch with a
sharding constraint over the data axis, so each device materializes only its own
k / n_devices examples of every batch. That is how each process loads its slice of
every batch, without host-side input pipelines that could disagree on the order.

Every process runs the same sweep in the same order and takes part in every compiled
step and checkpoint; only process 0 claims points and writes files (`is_writer`).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from absl import logging


@dataclasses.dataclass(frozen=True)
class Cluster:
  process_index: int
  process_count: int
  local_devices: int
  global_devices: int


def initialize(*, coordinator_address: str = "", num_processes: int = 0,
               process_id: int = -1) -> Cluster:
  """Join a multi-process run; call before anything else touches JAX's devices.

  Leave all three arguments unset to auto-detect the cluster; set all three to name it.
  """
  explicit = dict(coordinator_address=coordinator_address or None,
                  num_processes=num_processes if num_processes > 0 else None,
                  process_id=process_id if process_id >= 0 else None)
  jax.distributed.initialize(**{k: v for k, v in explicit.items() if v is not None})
  cluster = current()
  logging.info("multi-process run: process %d of %d, %d local of %d devices",
               cluster.process_index, cluster.process_count, cluster.local_devices,
               cluster.global_devices)
  return cluster


def current() -> Cluster:
  return Cluster(process_index=jax.process_index(), process_count=jax.process_count(),
                 local_devices=jax.local_device_count(), global_devices=jax.device_count())


def is_writer() -> bool:
  """Only process 0 writes results; the others compute and stay silent."""
  return jax.process_index() == 0


def broadcast_int(value: int) -> int:
  """Process 0's value on every process (decisions only the writer can take)."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))
