"""Validate a config once, at the boundary, into a `Resolved` run that the rest trusts.

`resolve` runs every check that needs no compiling: each section's fields, the dataset
(headers only, no pixels), and what depends on the machine (k a multiple of the device
count). It raises the first ConfigError. Nothing downstream validates again: builders
take a `Resolved`, never a raw config. A `batch_size="auto"` stays unresolved here; the
memory search (`sgdlab.memory.auto`) replaces it by a k before anything is written.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import ml_collections
import numpy as np

from sgdlab import data, models, optim, units
from sgdlab.config import batch_schedule
from sgdlab.config.fields import run_name, set_field
from sgdlab.errors import ConfigError, check_number

# Compute dtypes; parameters, optimizer state and the loss stay float32.
DTYPES = ("float32", "bfloat16", "auto")


def noise_groups_for(requested: int, n_devices: int, accumulating: bool) -> int:
  """Small batches per device batch (per micro-batch when accumulating) for the noise
  scale: `requested` (config.noise_groups), or for 0 McCandlish's B_small, one device's
  share, so only one device without accumulation splits its batch (in two)."""
  return int(requested) or (2 if n_devices == 1 and not accumulating else 1)


@dataclasses.dataclass(frozen=True)
class Resolved:
  """A validated config with the facts it was validated against.

  With config.batch_size_schedule, `batch_size` is the k of the epochs this Resolved
  compiles for (`at_epoch`); the run's length, its lr schedule and its name belong to the
  whole schedule, whichever phase is asked.
  """

  config: ml_collections.ConfigDict
  spec: data.DataSpec
  n_devices: int
  phase_batch_size: int = 0  # > 0: k of one phase of the schedule (`at_epoch`)

  @property
  def auto_batch_size(self) -> bool:
    return self.config.batch_size == "auto"

  @property
  def batch_size(self) -> int:
    if self.auto_batch_size:
      raise ValueError("batch_size='auto' is not resolved yet (sgdlab.memory.auto)")
    return self.phase_batch_size or int(self.config.batch_size)

  @property
  def batch_sizes(self) -> tuple[int, ...]:
    """k of each epoch: batch_size throughout, or as config.batch_size_schedule says."""
    if self.auto_batch_size:
      raise ValueError("batch_size='auto' is not resolved yet (sgdlab.memory.auto)")
    return batch_schedule.epoch_batch_sizes(self.config)

  @property
  def phases(self) -> tuple[int, ...]:
    """The distinct k of the run, in the order they first train."""
    return tuple(dict.fromkeys(self.batch_sizes))

  def at_epoch(self, epoch: int) -> Resolved:
    """This run as it trains epoch `epoch`: its batch size is that epoch's k."""
    k = self.batch_sizes[epoch]
    return dataclasses.replace(self, phase_batch_size=0 if k == int(self.config.batch_size)
                               else k)

  def steps_at(self, k: int) -> int:
    """Updates in an epoch of batch size k."""
    n = self.spec.n_train
    return n // k if self.config.drop_remainder else math.ceil(n / k)

  @property
  def epoch_end_steps(self) -> tuple[int, ...]:
    """Updates taken by the end of each epoch (the global step of its row)."""
    return tuple(int(x) for x in np.cumsum([self.steps_at(k) for k in self.batch_sizes]))

  def steps_before(self, epoch: int) -> int:
    """Updates taken before epoch `epoch` starts."""
    return self.epoch_end_steps[epoch - 1] if epoch > 0 else 0

  @property
  def auto_plan(self) -> bool:
    """Whether the fixed-k planner still has to choose micro-batch or dtype."""
    return self.config.microbatch_size == "auto" or self.config.dtype == "auto"

  @property
  def per_device_batch(self) -> int:
    return self.batch_size // self.n_devices

  @property
  def microbatch_size(self) -> int:
    """Examples per micro-step on each device: the whole per-device batch when
    microbatch_size is 0 (no accumulation)."""
    if self.config.microbatch_size == "auto":
      raise ValueError("microbatch_size='auto' is not planned yet (sgdlab.memory.auto)")
    return int(self.config.microbatch_size) or self.per_device_batch

  @property
  def accumulation_steps(self) -> int:
    """Micro-steps per optimizer update."""
    return self.per_device_batch // self.microbatch_size

  @property
  def dtype(self) -> str:
    if self.config.dtype == "auto":
      raise ValueError("dtype='auto' is not planned yet (sgdlab.memory.auto)")
    return self.config.dtype

  @property
  def steps_per_epoch(self) -> int:
    """Updates in an epoch at this Resolved's k."""
    return self.steps_at(self.batch_size)

  @property
  def total_steps(self) -> int:
    return self.epoch_end_steps[-1]

  @property
  def learning_rate(self) -> float:
    """The base learning rate after the batch-size scaling rule (lr_scaling)."""
    return self.config.learning_rate * self.lr_scale

  @property
  def lr_scale(self) -> float:
    """lr_scaling's factor for the run's first k (1 when lr_scaling is "none")."""
    c = self.config
    return optim.scaled_learning_rate(1.0, int(c.batch_size), c.lr_scaling, c.base_batch_size)

  @property
  def schedule(self) -> ml_collections.ConfigDict:
    """config.schedule with its warmup in steps (warmup_epochs, counted at the first k,
    and warmup_from resolved)."""
    return optim.resolve_warmup(self.config.schedule, self.steps_at(int(self.config.batch_size)),
                                self.lr_scale)

  @property
  def name(self) -> str:
    return run_name(self.config)

  @property
  def noise_groups(self) -> int:
    """Parts each device's batch (each micro-batch) is split into for the noise scale."""
    c = self.config
    return noise_groups_for(c.noise_groups, self.n_devices,
                                 self.accumulation_steps > 1) if c.noise_scale else 1

  @property
  def batch_unit(self) -> int:
    """k must be a multiple of this: the device count, times the parts each device's
    batch is split into for the noise scale, times the virtual batch when batch norm
    normalizes virtual batches (each part must hold whole ones)."""
    c = self.config
    groups = noise_groups_for(c.noise_groups, self.n_devices, False)
    virtual = (int(c.model.bn_virtual_batch_size)
               if models.has_batch_norm(c.model) and c.model.bn_mode == "virtual" else 1)
    return self.n_devices * (groups if c.noise_scale else 1) * virtual

  def with_batch_size(self, k: int) -> Resolved:
    """The same run at batch size k (checked as resolve would)."""
    config = copy.deepcopy(self.config)
    config.batch_size = int(k)
    _check_batch_size(config, self.spec, self.n_devices)
    return dataclasses.replace(self, config=config, phase_batch_size=0)

  def with_fields(self, **fields: Any) -> Resolved:
    """The same run with other fields, dotted for nested ones: a population member
    (learning_rate, seed), or the program another backend compiles (model.conv_impl)."""
    config = copy.deepcopy(self.config)
    for key, value in fields.items():
      set_field(config, key, value)
    return dataclasses.replace(resolve(config, n_devices=self.n_devices, spec=self.spec),
                               phase_batch_size=self.phase_batch_size)


def resolve(config: ml_collections.ConfigDict, *, n_devices: int,
            spec: data.DataSpec | None = None) -> Resolved:
  """Every check that needs no compiling, once; a Resolved copy of the config.

  spec: the dataset's shapes when the caller has the data already (else described
  from config.data, which reads file headers only).
  """
  c = copy.deepcopy(config)
  _check_numbers(c)
  _check_probe_fields(c)
  _check_precision_and_rules(c)
  optim.validate_optimizer(c.optimizer)
  models.validate(c.model)
  spec = data.describe(c.data) if spec is None else spec
  _check_model_data(c, spec)
  optim.validate_schedule(c.schedule)
  batch_schedule.validate(c, lambda at_k: (_check_batch_size(at_k, spec, n_devices),
                                           _check_probe(at_k, spec)))
  if c.batch_size != "auto":
    _check_batch_size(c, spec, n_devices)
    _check_probe(c, spec)
  elif models.has_batch_norm(c.model):
    _check_auto_batch_norm(c)
  resolved = Resolved(c, spec, n_devices)
  if c.batch_size != "auto":
    optim.validate_schedule(c.schedule, resolved.total_steps, resolved.steps_per_epoch,
                            resolved.lr_scale)
  return resolved


def _check_numbers(c: ml_collections.ConfigDict) -> None:
  """Every top-level number in its range."""
  if c.batch_size != "auto":
    check_number("batch_size", c.batch_size, low=1, integer=True,
                 what='an integer >= 1, or "auto"')
  check_number("num_epochs", c.num_epochs, low=1, integer=True, what="an integer >= 1")
  check_number("learning_rate", c.learning_rate, low=0, strict=True,
               what="a finite number > 0")
  check_number("lr_decay", c.lr_decay, low=0, what="a finite number >= 0")
  check_number("label_smoothing", c.label_smoothing, low=0, high=1, high_open=True,
               what="a number in [0, 1) (0: plain cross-entropy)")
  check_number("seed", c.seed, low=0, integer=True, what="an integer >= 0")
  check_number("eval_batch_size", c.eval_batch_size, low=1, integer=True,
               what="an integer >= 1")
  check_number("base_batch_size", c.base_batch_size, low=1, integer=True,
               what="an integer >= 1")
  check_number("steps_per_call", c.steps_per_call, low=0, integer=True,
               what="an integer >= 0 (0: a whole epoch per compiled call)")
  check_number("checkpoint_every_epochs", c.checkpoint_every_epochs, low=0, integer=True,
               what="an integer >= 0 (0 = no checkpoints)")
  check_number("memory_headroom", c.memory_headroom, low=0, high=1, high_open=True,
               what="a fraction in [0, 1)")
  check_number("noise_ema", c.noise_ema, low=0, strict=True, high=1, high_open=True,
               what="a number in (0, 1)")
  check_number("noise_groups", c.noise_groups, low=0, integer=True,
               what="an integer >= 0 (0: 2 on one device without accumulation, else 1)")
  check_number("noise_probe_batches", c.noise_probe_batches, low=0, integer=True,
               what="an integer >= 0 (0: no probe)")
  check_number("sharpness_batches", c.sharpness_batches, low=0, integer=True,
               what="an integer >= 0 (0: no sharpness)")
  check_number("sharpness_iterations", c.sharpness_iterations, low=1, integer=True,
               what="an integer >= 1")
  check_number("sharpness_top", c.sharpness_top, low=1, high=c.sharpness_iterations,
               integer=True, what=f"an integer in [1, sharpness_iterations="
               f"{c.sharpness_iterations}]")
  check_number("sharpness_epsilon", c.sharpness_epsilon, low=0,
               what="a number >= 0 (0: no epsilon-sharpness)")
  check_number("sharpness_every_epochs", c.sharpness_every_epochs, low=1, integer=True,
               what="an integer >= 1")


def _check_probe_fields(c: ml_collections.ConfigDict) -> None:
  """The noise probe reads the step's noise norms from full batches placed on devices."""
  if c.noise_probe_batches and not c.noise_scale:
    raise ConfigError("noise_probe_batches", c.noise_probe_batches,
                      "0 unless noise_scale=True (the probe reads the step's noise norms)")
  if c.noise_probe_batches and c.batch_size == "auto":
    raise ConfigError("noise_probe_batches", c.noise_probe_batches,
                      "0 with batch_size='auto' (how many full batches an epoch has depends "
                      "on the k the search finds)")
  if c.noise_probe_batches and c.data.pipeline == "grain":
    raise ConfigError("noise_probe_batches", c.noise_probe_batches,
                      "0 with data.pipeline='grain' (the probe draws its batches from the "
                      "training set placed on the devices)")
  if c.sharpness_batches and (c.batch_size == "auto" or c.data.pipeline == "grain"):
    raise ConfigError("sharpness_batches", c.sharpness_batches,
                      "0 with batch_size='auto' or data.pipeline='grain' (its full batches "
                      "come from the training set placed on the devices, at a known k)")


def _check_precision_and_rules(c: ml_collections.ConfigDict) -> None:
  """Accumulation, dtype, the lr scaling rule, drop_remainder and the memory budget."""
  if c.microbatch_size != "auto":
    check_number("microbatch_size", c.microbatch_size, low=0, integer=True,
                 what='an integer >= 0 (0: no accumulation), or "auto"')
  if c.dtype not in DTYPES:
    raise ConfigError("dtype", c.dtype, f"one of {list(DTYPES)}")
  if c.batch_size == "auto" and c.microbatch_size != 0:
    raise ConfigError("microbatch_size", c.microbatch_size,
                      '0 when batch_size="auto" (the largest k that fits is a question '
                      'without accumulation; give k to plan micro-batches for it)')
  if c.batch_size == "auto" and c.dtype == "auto":
    raise ConfigError("dtype", c.dtype, 'float32 or bfloat16 when batch_size="auto" '
                      '("auto" is chosen by the fixed-k planner, microbatch_size)')
  if c.lr_scaling not in optim.SCALING_RULES:
    raise ConfigError("lr_scaling", c.lr_scaling, f"one of {list(optim.SCALING_RULES)}")
  if not isinstance(c.drop_remainder, bool):
    raise ConfigError("drop_remainder", c.drop_remainder, "True or False")
  if c.memory_budget not in ("", None):
    units.parse_bytes(c.memory_budget)


def _check_model_data(c: ml_collections.ConfigDict, spec: data.DataSpec) -> None:
  """A language model reads windows of tokens, and only it does."""
  sequence = c.model.name in models.SEQUENCE_MODELS
  if sequence and not spec.seq_len:
    raise ConfigError("data.name", c.data.name,
                      f"'text' for model.name={c.model.name!r} (it reads windows of tokens)")
  if spec.seq_len and not sequence:
    raise ConfigError("model.name", c.model.name,
                      f"one of {list(models.SEQUENCE_MODELS)} for data.name={c.data.name!r}")


def _check_batch_size(c: ml_collections.ConfigDict, spec: data.DataSpec, n_devices: int) -> None:
  k = int(c.batch_size)
  if k % n_devices:
    raise ConfigError("batch_size", c.batch_size,
                      f"a multiple of the device count {n_devices} "
                      f"(e.g. {max(n_devices, k // n_devices * n_devices)})")
  local, micro = k // n_devices, c.microbatch_size
  if micro != "auto" and micro and (micro > local or local % micro):
    below = max(d for d in range(1, min(int(micro), local) + 1) if local % d == 0)
    raise ConfigError("microbatch_size", micro,
                      f"a divisor of the per-device batch {local} (k={k} over {n_devices} "
                      f"device(s)), e.g. {below}; or 0 for no accumulation")
  # Accumulating, the micro-batches are the noise scale's small batches, split further
  # only by an explicit noise_groups.
  accumulating = micro not in (0, "auto") and local // int(micro) > 1
  split = noise_groups_for(c.noise_groups, n_devices, accumulating)
  if c.noise_scale and split > 1:
    unit = int(micro) if accumulating else local
    if c.noise_groups and unit % split:
      raise ConfigError("noise_groups", c.noise_groups,
                        f"a divisor of the {unit} examples each device computes at once "
                        f"(k={k} over {n_devices} device(s)"
                        f"{', per micro-batch' if accumulating else ''}), e.g. "
                        f"{max(d for d in range(1, min(split, unit) + 1) if unit % d == 0)}")
    if unit % split:
      raise ConfigError("batch_size", c.batch_size,
                        "an even number when noise_scale=True on one device (it splits "
                        "the batch)")
  if k > spec.n_train:
    raise ConfigError("batch_size", c.batch_size,
                      f"at most the training set size {spec.n_train}")
  if models.has_batch_norm(c.model):
    _check_batch_norm(c, spec, k, local, micro, accumulating)


def _check_probe(c: ml_collections.ConfigDict, spec: data.DataSpec) -> None:
  """The noise probe's and the sharpness's batches are full ones from one permutation."""
  k = int(c.batch_size)
  if c.sharpness_batches > spec.n_train // k:
    raise ConfigError("sharpness_batches", c.sharpness_batches,
                      f"at most the {spec.n_train // k} full batches of k={k} in the "
                      f"{spec.n_train} training examples")
  if c.noise_probe_batches > spec.n_train // k:
    raise ConfigError("noise_probe_batches", c.noise_probe_batches,
                      f"at most the {spec.n_train // k} full batches of k={k} in an epoch of "
                      f"{spec.n_train} examples (the probe draws them from one permutation)")


def _check_auto_batch_norm(c: ml_collections.ConfigDict) -> None:
  """The search tries many k: each must keep padding out of the statistics."""
  if not c.drop_remainder:
    raise ConfigError("drop_remainder", c.drop_remainder,
                      f"True for model.name={c.model.name!r} with batch_size='auto' (a "
                      "last partial batch would put padding into batch norm's statistics)")


def _check_batch_norm(c: ml_collections.ConfigDict, spec: data.DataSpec, k: int, local: int,
                      micro: Any, accumulating: bool) -> None:
  """Batch statistics need real examples only, and virtual batches that tile the batch."""
  if not c.drop_remainder and spec.n_train % k:
    raise ConfigError("drop_remainder", c.drop_remainder,
                      f"True for model.name={c.model.name!r}: the last batch of k={k} would "
                      f"hold {k - spec.n_train % k} padding examples, and batch norm's "
                      "statistics would include them")
  if c.model.bn_mode != "virtual":
    return
  vb = c.model.bn_virtual_batch_size
  if micro == "auto":
    raise ConfigError("microbatch_size", micro, "a number with bn_mode='virtual' (the "
                      "planner does not keep micro-batches a multiple of the virtual batch)")
  seen = int(micro) if accumulating else local
  if c.noise_scale:
    seen //= noise_groups_for(c.noise_groups, k // local, accumulating)
  if seen % vb:
    raise ConfigError("model.bn_virtual_batch_size", vb,
                      f"a divisor of the {seen} examples each device normalizes at once "
                      f"(k={k} over {k // local} device(s)"
                      f"{', per micro-batch' if accumulating else ''}), e.g. "
                      f"{max(d for d in range(1, min(vb, seen) + 1) if seen % d == 0)}")
