"""How ResNet-50 at 224x224 fits an accelerator, and what the planner does for the recipes.

Both tables compile the trainer's own programs for an accelerator target (XLA's own
convolutions, no CPU runtime terms; `sgdlab.memory.estimator`) on one device of this
machine, with abstract inputs: nothing is allocated, so 80 GiB of a device can be
asked about from a laptop. Data parallelism keeps every device's program that of its
share of k, so one device answers for any device count at the same per-device batch
(the gradient's all-reduce is in place; with bn_mode="device" nothing else is shared).
The input is ImageNet's shape as sgdlab streams it (uint8 crops, 1,000 classes), the
optimizer momentum (Goyal et al.) or LARS (You et al.), weight decay on the weights.

`fit_table`: the largest per-device k under each budget, float32 and bfloat16, with
and without remat (`sgdlab.memory.search.find_batch_size`, one estimator per column
shared across budgets). `plan_table`: for each recipe, device count and memory size,
the fixed-k planner's micro-batch, remat and dtype (`sgdlab.memory.plan`).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import ml_collections

from sgdlab import config as config_lib
from sgdlab.config import recipes
from sgdlab.memory import plan, search
from sgdlab.memory.budget import device_budget
from sgdlab.memory.estimator import Estimator
from sgdlab.train import step

TARGET = "accelerator"


def workload(per_device_k: int, optimizer: str = "momentum", depth: int = 50,
             size: int = 224) -> ml_collections.ConfigDict:
  """ResNet-`depth` on ImageNet-shaped input at one device's share of k: the recipe's
  model and optimizer over a stand-in of ImageNet's shapes (no files are read)."""
  c = recipes.imagenet_resnet(config_lib.default_config(), per_device_k, depth)
  c.data.name, c.data.dir = "synthetic", ""
  c.data.synthetic_input_shape, c.data.synthetic_num_classes = (size, size, 3), 1000
  c.data.synthetic_n_train, c.data.synthetic_n_test = recipes.IMAGENET_TRAIN, 50_000
  c.data.image_size, c.eval_batch_size = 0, 256
  c.optimizer.name, c.optimizer.weight_decay = optimizer, 1e-4
  c.optimizer.decay_params, c.memory_headroom = "matrices", 0.0
  return c


def fit_table(budgets: Sequence[str], dtypes: Sequence[str] = ("float32", "bfloat16"),
              remats: Sequence[bool] = (False, True), exact: bool = True,
              depth: int = 50, size: int = 224) -> list[dict[str, Any]]:
  """Rows (dtype, remat, budget, largest power of two, largest k, bytes per example)."""
  mesh = step.make_mesh(jax.devices()[:1])
  rows = []
  for dtype in dtypes:
    for remat in remats:
      c = workload(1, depth=depth, size=size)
      c.dtype, c.model.remat = dtype, remat
      t0 = time.perf_counter()
      est = Estimator(config_lib.resolve(c, n_devices=1), mesh, target=TARGET)
      for budget in budgets:
        report = search.find_batch_size(est.resolved, device_budget(mesh, budget, 0.0),
                                        mesh=mesh, target=TARGET, exact=exact,
                                        check_trainer=False, estimator=est)
        rows.append(dict(dtype=dtype, remat=remat, budget=budget,
                         largest_power_of_two=report.largest_power_of_two,
                         largest_k=report.largest_k,
                         bytes_per_example=report.slope_bytes_per_example))
      print(f"{dtype} remat={remat}: {est.compiles} compiles, "
            f"{time.perf_counter() - t0:.0f} s", flush=True)
  return rows


def plan_table(cases: Sequence[tuple[str, int, str, int]], budgets: Sequence[str]
               ) -> list[dict[str, Any]]:
  """For (recipe, k, optimizer, devices) at each budget: the planner's choice for the
  per-device batch k / devices (micro-batch and dtype "auto")."""
  mesh = step.make_mesh(jax.devices()[:1])
  rows = []
  for recipe, k, optimizer, devices in cases:
    for budget in budgets:
      c = workload(k // devices, optimizer)
      c.microbatch_size, c.dtype, c.memory_budget = "auto", "auto", budget
      resolved = config_lib.resolve(c, n_devices=1)
      t0 = time.perf_counter()
      try:
        report = plan.plan_microbatch(resolved, device_budget(mesh, budget, 0.0), mesh=mesh,
                                      target=TARGET)
        p = report.chosen
        chosen = dict(microbatch_size=p.microbatch_size, accumulation=p.accumulation_steps,
                      remat=p.remat, dtype=p.dtype, bytes=p.bytes, compiles=report.compiles)
      except ValueError as e:  # no plan fits: the planner's one line
        chosen = dict(error=str(e))
      rows.append(dict(recipe=recipe, k=k, devices=devices, per_device=k // devices,
                       budget=budget, seconds=round(time.perf_counter() - t0), **chosen))
      print(rows[-1], flush=True)
  return rows
