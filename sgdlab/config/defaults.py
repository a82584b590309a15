"""The default run config: the classic Keras MNIST run, and every field a run reads.

A config is one ml_collections.ConfigDict. Experiment files in experiments/ start from
`default_config()` and change fields; `sgdlab.config.resolve` validates it once.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from sgdlab import data, models, optim


def default_config() -> ml_collections.ConfigDict:
  """MLP 784-512-512-10, SGD lr=1 with Keras decay 1e-3, k=32, 10 epochs, bundled MNIST."""
  c = ml_collections.ConfigDict()
  c.name = ""  # run name in logs and legends; "" derives one from k, lr and decay
  c.seed = 0  # parameter init, data order (seed, epoch) and dropout all derive from it
  # global k, split evenly over all devices; "auto": the largest that fits (sgdlab.memory)
  c.batch_size = config_dict.FieldReference(32, field_type=object)
  # k by epoch (Smith et al. 2018): batch_size until epoch boundaries[0], then sizes[i]
  # from epoch boundaries[i]; empty: batch_size throughout (sgdlab.config.batch_schedule).
  c.batch_size_schedule = ml_collections.ConfigDict(dict(boundaries=(), sizes=()))
  c.num_epochs = 10
  c.learning_rate = 1.0
  c.lr_decay = 1e-3  # Keras' SGD(decay=...): lr_t = lr / (1 + decay * t) with inverse_time
  # Training loss against (1 - eps) onehot + eps / classes (Szegedy et al. 2016), in
  # [0, 1); 0 = plain cross-entropy. Evaluation loss and accuracy use the true labels.
  c.label_smoothing = 0.0
  # Gradient accumulation: per-device micro-batch (0 = none). k / (n_devices * this)
  # micro-steps per optimizer update; "auto": the planner picks it for a fixed k.
  c.microbatch_size = config_dict.FieldReference(0, field_type=object)
  # Compute dtype: float32 | bfloat16 (parameters, optimizer state, loss stay float32)
  # | auto (the fixed-k planner chooses).
  c.dtype = "float32"
  c.lr_scaling = "none"  # none | linear | sqrt: scale learning_rate from base_batch_size to k
  c.base_batch_size = 256
  c.drop_remainder = False  # True: skip each epoch's partial last batch (every step sees k)
  # Steps per compiled call: 0 = a whole epoch in one scan (fastest for dense models);
  # 1 = one dispatch per step. Results do not depend on it.
  c.steps_per_call = 0
  c.schedule = optim.schedule_config()
  c.optimizer = optim.optimizer_config()
  c.model = models.default_config()
  c.data = data.default_config()
  c.eval_batch_size = 1000  # no effect on results; bounds eval memory
  c.noise_scale = False  # online gradient noise scale (sgdlab.noise); see noise_groups
  c.noise_ema = 0.95  # EMA weight per step for the noise-scale estimates
  # Small batches per device batch (per micro-batch when accumulating) for the noise
  # scale: 0 = 2 on one device without accumulation, else 1 (B_small = one device's share).
  c.noise_groups = 0
  # With noise_scale: B_simple at each epoch's end from this many extra full batches at
  # that epoch's final parameters, updates discarded (sgdlab.train.program.Program.probe_fn).
  # Costs that many more gradients per epoch; accurate where the per-step estimates are
  # not (B_simple near k or above). 0 = no probe.
  c.noise_probe_batches = 0
  # Curvature of the training loss at each epoch's end (sgdlab.curvature) on this many full
  # batches, the same every epoch: top Hessian eigenvalues (Lanczos), g'Hg/g'g. 0 = none.
  c.sharpness_batches = 0
  c.sharpness_iterations = 20  # Lanczos iterations: Hessian-vector products per epoch
  c.sharpness_top = 1  # eigenvalues reported: hessian_eig_1 (= sharpness) .. _top
  c.sharpness_epsilon = 0.0  # > 0: also Keskar et al.'s epsilon-sharpness in that box
  c.sharpness_every_epochs = 1  # measured every N epochs and after the last (nan between)
  c.checkpoint_every_epochs = 0  # 0: no checkpoints
  c.population = False  # sweeps: points differing only in lr, decay, seed run as one program
  c.memory_budget = ""  # for batch_size="auto": e.g. "8GiB"; "" = this device
  c.memory_headroom = 0.1  # for batch_size="auto": fraction kept free
  c.sweep = _sweep_config()
  return c


def _sweep_config() -> ml_collections.ConfigDict:
  """config.sweep: what a sweep varies (sgdlab.sweep.expand)."""
  return ml_collections.ConfigDict(dict(
      product=ml_collections.ConfigDict(),  # field -> tuple of values, all combinations
      zip=ml_collections.ConfigDict(),  # field -> tuple of values, taken in lockstep
      points=(),  # tuple of dicts of overrides, each one run (after product and zip)
      # Quasi-random trials (sgdlab.sweep.search), multiplied with the three above.
      search=ml_collections.ConfigDict(dict(
          trials=0,  # 0: no search
          seed=0,  # of the sequence's scrambling
          space=ml_collections.ConfigDict(),  # field -> dict(min, max, scale) | dict(choices)
      )),
  ))
