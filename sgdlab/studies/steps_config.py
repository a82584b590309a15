"""The steps-to-target study's config: its section, `config.steps_to_target`, and its checks.

`base_config()` is sgdlab's default config with constant-lr SGD, as Shallue et al.
(2018) measure steps to a target, and the section below; an experiment picks the
model and data. `validate` runs once, before anything compiles or is written, and
raises a one-line ConfigError naming the field (`steps_to_target.noise_probe_batches`).
"""

from __future__ import annotations

import math

import ml_collections

from sgdlab import config as config_lib
from sgdlab.errors import ConfigError

METRICS = ("test_accuracy", "train_loss", "validation_accuracy", "validation_loss",
           "validation_bits_per_byte")

# The test figure reported beside each tuned metric (validation tunes the lr).
TEST_OF = {"test_accuracy": "test_accuracy", "train_loss": "test_loss",
           "validation_accuracy": "test_accuracy", "validation_loss": "test_loss",
           "validation_bits_per_byte": "test_bits_per_byte"}


def section() -> ml_collections.ConfigDict:
  """config.steps_to_target's defaults: what is tuned, to which target, within what budget."""
  return ml_collections.ConfigDict(dict(
      batch_sizes=(),  # () = 1, 2, 4, ... below the training set size, and the set size
      metric="test_accuracy",  # test_accuracy (reach >= target) or train_loss (<= target)
      target=0.9,
      lr_factor=2 ** 0.5,  # grid spacing
      max_lrs=6,  # runs per k at most
      max_steps=30_000,  # per run
      max_examples=3_000_000,  # per run; with max_steps, the budget for one (k, lr)
      eval_growth=1.05,  # check the metric when the step count has grown by this factor
      noise_batch_size=256,  # k of the online noise-scale run (B_small = k / noise_groups)
      noise_length=4.0,  # that run's length, in multiples of its k's steps to target
      noise_checkpoints=4,  # checkpoints of that run with exact and fixed-params B_simple
      noise_fixed_batches=400,  # batches averaged at each checkpoint
      # The noise run's config.noise_probe_batches: B_simple in training at each epoch's
      # end from this many extra batches at its parameters (0: none). 15 = every full
      # batch of 256 in the 4,000 digits: near exact, for ~2x that run's gradients.
      noise_probe_batches=15,
      seeds=(0,),  # each (k, lr) runs every seed; its steps are their mean
  ))


def base_config() -> ml_collections.ConfigDict:
  """sgdlab's defaults with a constant lr, no decay, and the steps_to_target section."""
  c = config_lib.default_config()
  c.optimizer.name = "sgd"
  c.schedule.name = "constant"
  c.lr_decay = 0.0
  c.learning_rate = 0.01  # the first lr tried at the smallest k
  c.num_epochs = 100  # only read by schedules that need a length (cosine)
  # The noise run's small batches: 16 of k/16, not two halves (sgdlab.studies.noise_run).
  c.noise_groups = 16
  c.steps_to_target = section()
  return c


def budget(s: ml_collections.ConfigDict, k: int) -> int:
  """Steps one (k, lr) run may take: max_steps, or max_examples / k if fewer."""
  return int(min(s.max_steps, max(1, s.max_examples // k)))


def batch_sizes(config: ml_collections.ConfigDict, n_train: int) -> list[int]:
  """The k of the study, sorted: the section's, or the powers of two below n_train and n_train."""
  ks = tuple(config.steps_to_target.batch_sizes)
  if not ks:
    ks = [2 ** i for i in range(int(math.log2(n_train)) + 1) if 2 ** i < n_train] + [n_train]
  return sorted({int(k) for k in ks})


def validate(config: ml_collections.ConfigDict, n_train: int | None = None) -> None:
  """ConfigError for anything that cannot run, before any compile; with n_train (the
  training set's size, `sgdlab.data.describe`), the sizes against it too."""
  config_lib.resolve(config, n_devices=1)
  _check_target(config.steps_to_target)
  _check_counts(config.steps_to_target)
  _check_noise_run(config)
  if n_train is not None:
    _check_sizes(config, n_train)


def _check_target(s: ml_collections.ConfigDict) -> None:
  if s.metric not in METRICS:
    raise ConfigError("steps_to_target.metric", s.metric, f"one of {list(METRICS)}")
  if not (isinstance(s.target, (int, float)) and math.isfinite(s.target)):
    raise ConfigError("steps_to_target.target", s.target, "a finite number")
  if not s.seeds or any(not isinstance(x, int) or x < 0 for x in s.seeds):
    raise ConfigError("steps_to_target.seeds", tuple(s.seeds), "integers >= 0, at least one")
  if s.metric.endswith("accuracy") and not 0 < s.target <= 1:
    raise ConfigError("steps_to_target.target", s.target, "an accuracy in (0, 1]")


def _check_counts(s: ml_collections.ConfigDict) -> None:
  if s.noise_length <= 0:
    raise ConfigError("steps_to_target.noise_length", s.noise_length, "a number > 0")
  if s.lr_factor <= 1:
    raise ConfigError("steps_to_target.lr_factor", s.lr_factor, "a number > 1")
  if s.eval_growth <= 1:
    raise ConfigError("steps_to_target.eval_growth", s.eval_growth, "a number > 1")
  for field in ("max_lrs", "max_steps", "max_examples", "noise_fixed_batches"):
    if int(s[field]) < 1:
      raise ConfigError(f"steps_to_target.{field}", s[field], "an integer >= 1")
  if not isinstance(s.noise_probe_batches, int) or s.noise_probe_batches < 0:
    raise ConfigError("steps_to_target.noise_probe_batches", s.noise_probe_batches,
                      "an integer >= 0 (0: no probe)")


def _check_noise_run(config: ml_collections.ConfigDict) -> None:
  s = config.steps_to_target
  split = config_lib.noise_groups_for(config.noise_groups, 1, False)  # one device
  if s.noise_batch_size < 0 or s.noise_batch_size % split:
    raise ConfigError("steps_to_target.noise_batch_size", s.noise_batch_size,
                      f"a multiple of {split} (one device splits the batch into "
                      f"noise_groups={split} parts), or 0: no noise run")


def _check_sizes(config: ml_collections.ConfigDict, n_train: int) -> None:
  s = config.steps_to_target
  if any(not 1 <= k <= n_train for k in batch_sizes(config, n_train)):
    raise ConfigError("steps_to_target.batch_sizes", tuple(s.batch_sizes),
                      f"sizes in [1, {n_train}] (the training set)")
  if s.noise_batch_size > n_train:
    raise ConfigError("steps_to_target.noise_batch_size", s.noise_batch_size,
                      f"at most the training set size {n_train}")
  if s.noise_batch_size and s.noise_probe_batches > n_train // s.noise_batch_size:
    raise ConfigError("steps_to_target.noise_probe_batches", s.noise_probe_batches,
                      f"at most the {n_train // s.noise_batch_size} full batches of "
                      f"noise_batch_size={s.noise_batch_size} in the {n_train} examples")
