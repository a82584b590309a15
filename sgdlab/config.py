"""The run config: defaults, validation before anything compiles, and resolved values.

A config is one ml_collections.ConfigDict. `validate` runs once, early, and raises a
ConfigError naming the field, the value and what is valid; everything downstream
trusts the config. Experiment files in experiments/ start from `default_config()`.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections
from ml_collections import config_dict

from sgdlab import data, models, optimizers, schedules
from sgdlab.errors import ConfigError


def default_config() -> ml_collections.ConfigDict:
  """The classic Keras MNIST run: MLP 784-512-512-10, SGD lr=1, decay=1e-3, k=32."""
  c = ml_collections.ConfigDict()
  c.name = ""  # run name in logs and legends; "" derives one from k, lr and decay
  c.seed = 0  # parameter init, data order (seed, epoch) and dropout all derive from it
  # global k, split evenly over all devices; "auto": the largest that fits (sgdlab.memory)
  c.batch_size = config_dict.FieldReference(32, field_type=object)
  c.num_epochs = 10
  c.learning_rate = 1.0
  c.lr_decay = 1e-3  # Keras' SGD(decay=...): lr_t = lr / (1 + decay * t) with inverse_time
  c.lr_scaling = "none"  # none | linear | sqrt: scale learning_rate from base_batch_size to k
  c.base_batch_size = 256
  c.schedule = schedules.default_config()
  c.optimizer = optimizers.default_config()
  c.optimizer.name = "sgd"
  c.model = models.default_config()
  c.data = data.default_config()
  c.eval_batch_size = 1000  # no effect on results; bounds eval memory
  c.noise_scale = False  # online gradient noise scale (sgdlab.noise); splits the batch
  c.noise_ema = 0.95  # EMA weight per step for the noise-scale estimates
  c.checkpoint_every_epochs = 0  # 0: no checkpoints
  c.population = False  # sweeps: points differing only in lr, decay, seed run as one program
  c.memory_budget = ""  # for batch_size="auto": e.g. "8GiB"; "" = this device
  c.memory_headroom = 0.1  # for batch_size="auto": fraction kept free
  c.sweep = ml_collections.ConfigDict(dict(
      product=ml_collections.ConfigDict(),  # field -> tuple of values, all combinations
      zip=ml_collections.ConfigDict(),  # field -> tuple of values, taken in lockstep
      points=(),  # tuple of dicts of overrides, each one run (after product and zip)
  ))
  return c


def _check_number(field: str, value: Any, *, low: float, strict: bool, kind: type = float,
                  what: str) -> None:
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  if ok and kind is int:
    ok = float(value).is_integer()
  if ok:
    ok = math.isfinite(value) and (value > low if strict else value >= low)
  if not ok:
    raise ConfigError(field, value, what)


def validate(config: ml_collections.ConfigDict, *, n_devices: int | None = None,
             n_train: int | None = None) -> None:
  """Raise ConfigError for the first value that cannot run; cheap, loads no data.

  n_devices and n_train add the checks that depend on the machine and the dataset
  (k a multiple of the device count; k no larger than the training set).
  """
  auto = config.batch_size == "auto"
  if not auto:
    _check_number("batch_size", config.batch_size, low=1, strict=False, kind=int,
                  what='an integer >= 1, or "auto"')
  _check_number("num_epochs", config.num_epochs, low=1, strict=False, kind=int,
                what="an integer >= 1")
  _check_number("learning_rate", config.learning_rate, low=0, strict=True,
                what="a finite number > 0")
  _check_number("lr_decay", config.lr_decay, low=0, strict=False, what="a finite number >= 0")
  _check_number("seed", config.seed, low=0, strict=False, kind=int, what="an integer >= 0")
  _check_number("eval_batch_size", config.eval_batch_size, low=1, strict=False, kind=int,
                what="an integer >= 1")
  _check_number("base_batch_size", config.base_batch_size, low=1, strict=False, kind=int,
                what="an integer >= 1")
  _check_number("checkpoint_every_epochs", config.checkpoint_every_epochs, low=0,
                strict=False, kind=int, what="an integer >= 0 (0 = no checkpoints)")
  _check_number("memory_headroom", config.memory_headroom, low=0, strict=False,
                what="a fraction in [0, 1)")
  if config.memory_headroom >= 1:
    raise ConfigError("memory_headroom", config.memory_headroom, "a fraction in [0, 1)")
  if not 0 < config.noise_ema < 1:
    raise ConfigError("noise_ema", config.noise_ema, "a number in (0, 1)")
  if config.lr_scaling not in schedules.SCALING_RULES:
    raise ConfigError("lr_scaling", config.lr_scaling, f"one of {list(schedules.SCALING_RULES)}")
  schedules.validate(config.schedule)
  optimizers.validate(config.optimizer)
  models.validate(config.model)
  data.validate(config.data)
  if auto:
    return
  k = int(config.batch_size)
  if n_devices is not None and k % n_devices:
    raise ConfigError("batch_size", config.batch_size,
                      f"a multiple of the device count {n_devices} "
                      f"(e.g. {max(n_devices, k // n_devices * n_devices)})")
  if n_devices is not None and config.noise_scale and n_devices == 1 and k % 2:
    raise ConfigError("batch_size", config.batch_size,
                      "an even number when noise_scale=True on one device (it splits the batch)")
  if n_train is not None and k > n_train:
    raise ConfigError("batch_size", config.batch_size,
                      f"at most the training set size {n_train}")


def learning_rate(config: ml_collections.ConfigDict) -> float:
  """The base learning rate after the batch-size scaling rule (lr_scaling)."""
  return schedules.scaled_learning_rate(config.learning_rate, int(config.batch_size),
                                        config.lr_scaling, config.base_batch_size)


def run_name(config: ml_collections.ConfigDict) -> str:
  """A short label for legends and logs: the fields a batch-size study varies."""
  if config.name:
    return config.name
  return f"k={config.batch_size} lr={config.learning_rate:g} decay={config.lr_decay:g}"


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """JSON-ready plain dict (tuples become lists)."""
  return config.to_dict()


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """A nested dict as {"dotted.name": leaf}: how fields are compared and overridden."""
  out = {}
  for key, value in d.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def from_dict(d: dict[str, Any]) -> ml_collections.ConfigDict:
  """Inverse of to_dict, merged over the defaults so files from older versions load."""
  config = default_config()
  _merge(config, d)
  return config


def _merge(target: ml_collections.ConfigDict, d: dict[str, Any]) -> None:
  for key, value in d.items():
    if isinstance(value, dict) and isinstance(target.get(key), ml_collections.ConfigDict):
      _merge(target[key], value)
    else:
      target[key] = tuple(value) if isinstance(value, list) else value
