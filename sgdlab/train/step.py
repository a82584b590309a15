"""The train step and the eval step: the one definition every other part compiles.

Data parallelism has pmap semantics, written with `jax.shard_map` over a 1-D mesh
whose axis is DATA: each device takes k / n_devices examples of the global batch and
the gradients are averaged with `lax.pmean`.

Two facts shape the code (measured on jax 0.10):
* With shard_map's default `check_vma=True`, the gradient with respect to a
  replicated parameter comes back already summed over the mesh, so a pmean on top
  would multiply the learning rate by n_devices. We use `check_vma=False`, where each
  device's gradient is its LOCAL gradient (which the noise-scale estimate needs too)
  and the pmean is ours. tests/train/test_step.py checks it against the full-batch gradient.
* A Python loop dispatching many multi-device steps asynchronously can deadlock on
  CPU; `sgdlab.train.run` runs many steps per compiled call and the loop blocks
  after each call on multi-device CPU meshes.

Gradient accumulation (`accumulation_steps` > 1) splits each device's share into that
many micro-batches and scans over them inside the step, so only one micro-batch's
activations are live; the sums are those of one big step, and one optimizer update
follows. `state.step` and the schedule count optimizer updates, never micro-steps.

The learning rate is computed inside the step from hyperparameters held in the state
(`state.hparams`), so one compiled program serves any (learning_rate, lr_decay) and
a population of them can be vmapped.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec as P

from sgdlab.config import noise_groups_for

DATA = "data"

# x [k, ...], y [k] int32 (text: [k, seq_len] next tokens), mask [k] float32 (1 = real example)
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
# (count, learning_rate, lr_decay) -> lr_t; learning_rate and lr_decay may be traced.
LrFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


class TrainState(flax.struct.PyTreeNode):
  """Everything a run needs to continue: checkpoint this and training resumes bitwise."""

  step: jax.Array  # int32: optimizer steps taken (Keras' `iterations`)
  params: Any
  batch_stats: Any  # batch norm's running averages ({} for models without batch norm)
  opt_state: Any
  hparams: dict[str, jax.Array]  # learning_rate, lr_decay (float32 scalars)
  rng: jax.Array  # uint32[2]: the dropout stream; folded with (step, device)
  diverged_at: jax.Array  # int32: step whose loss or gradient was not finite, or -1


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over all devices (all hosts' devices in a multi-process run)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(devices, (DATA,))


def init_state(model: nn.Module, tx: optax.GradientTransformation,
               input_shape: tuple[int, ...], *, seed: int, learning_rate: float,
               lr_decay: float) -> TrainState:
  """Initial state from the seed alone: parameter init and dropout use separate streams."""
  init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
  variables = model.init(init_key, jnp.zeros((1, *input_shape), jnp.float32))
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=dict(variables.get("batch_stats", {})), opt_state=tx.init(params),
      hparams=dict(learning_rate=jnp.asarray(learning_rate, jnp.float32),
                   lr_decay=jnp.asarray(lr_decay, jnp.float32)),
      rng=dropout_key, diverged_at=jnp.full((), -1, jnp.int32))


def eval_variables(state: TrainState) -> dict[str, Any]:
  """What evaluation applies the model with: parameters and batch norm's running averages."""
  return dict(params=state.params, batch_stats=state.batch_stats)


def _tree_sq_norm(tree: Any) -> jax.Array:
  return sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(tree))


def _all_finite(tree: Any) -> jax.Array:
  """True iff every element is finite, as one matrix-vector product with zeros per leaf.

  x * 0 is 0 for finite x and NaN for +-inf or NaN, and a sum of zeros cannot overflow,
  so this is exactly all(isfinite). On XLA CPU the isfinite reductions cost ~10% of a
  k=32 MLP step; the products are nearly free (experiments/benchmark_throughput.py).
  """
  total = jnp.zeros((), jnp.float32)
  for g in jax.tree.leaves(tree):
    m = g.reshape(g.shape[0], -1) if g.ndim > 1 else g.reshape(1, -1)
    zeros = jnp.zeros((m.shape[1],), m.dtype)
    total += jnp.sum(jnp.matmul(m, zeros, precision="highest")).astype(jnp.float32)
  return jnp.isfinite(total)


# On a 1-device mesh XLA CPU still runs every all-reduce (a copy of each gradient per
# step, ~9% of a k=32 MLP step), so the collectives below skip it when there is no
# one to reduce with.
def _psum(x: Any) -> Any:
  return x if jax.lax.axis_size(DATA) == 1 else jax.lax.psum(x, DATA)


def _pmean(x: Any) -> Any:
  return x if jax.lax.axis_size(DATA) == 1 else jax.lax.pmean(x, DATA)


def targets_per_example(batch: Batch) -> int:
  """Labels per example: 1 for a classifier, seq_len next-token targets for a window."""
  return math.prod(batch["y"].shape[1:])


def _losses(logits: jax.Array, y: jax.Array, m: jax.Array, label_smoothing: float = 0.0
            ) -> tuple[jax.Array, jax.Array]:
  """Masked cross-entropy and correctness per target: per example, or per token of a
  window (the loss of a language model is per token, each window's tokens weighted
  alike).

  label_smoothing = eps > 0 (training only): the cross-entropy against the one-hot
  target mixed with the uniform distribution, (1 - eps) onehot + eps / classes
  (Szegedy et al. 2016, section 7), which is (1 - eps) CE + eps mean_c(-log_softmax).
  Correctness is always against the true labels; eps = 0 is the plain loss, untouched.
  """
  m = m.reshape(m.shape + (1,) * (y.ndim - 1))
  if label_smoothing:
    targets = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype),
                                  label_smoothing)
    losses = optax.softmax_cross_entropy(logits, targets)
  else:
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
  return losses * m, correct * m


def _group_sums(grad_fn: Callable, params: Any, batch: Batch, rng: jax.Array, groups: int,
                norms: bool) -> tuple[Any, jax.Array, jax.Array, Any, jax.Array | None]:
  """Sums of gradient, loss and correct over `groups` equal parts of `batch`, and each
  part's squared gradient-sum norm [groups] when `norms`; batch norm's moments averaged
  over the parts (each part is normalized over its own examples)."""
  if groups == 1:
    (l_sum, (c_sum, moments)), g_sum = grad_fn(params, batch["x"], batch["y"], batch["mask"],
                                               rng)
    return g_sum, l_sum, c_sum, moments, (_tree_sq_norm(g_sum)[None] if norms else None)
  # A loop, not vmap: vmap makes every weight-gradient matmul a batched dot, which
  # XLA CPU runs far slower (k=32 MLP epoch: 15x; experiments/benchmark_noise_overhead.py).
  size, rngs = batch["mask"].shape[0] // groups, jax.random.split(rng, groups)
  part = lambda a, i: a[i * size:(i + 1) * size]
  outs = [grad_fn(params, part(batch["x"], i), part(batch["y"], i), part(batch["mask"], i),
                  rngs[i]) for i in range(groups)]
  l_sum, c_sum = sum(o[0][0] for o in outs), sum(o[0][1][0] for o in outs)
  sq = jnp.stack([_tree_sq_norm(o[1]) for o in outs]) if norms else None
  g_sum = jax.tree.map(lambda *g: sum(g[1:], g[0]), *(o[1] for o in outs))
  moments = jax.tree.map(lambda *m: sum(m[1:], m[0]) / groups, *(o[0][1][1] for o in outs))
  return g_sum, l_sum, c_sum, moments, sq


def _accumulate(grad_fn: Callable, params: Any, batch: Batch, rng: jax.Array, steps: int,
                groups: int, norms: bool
                ) -> tuple[Any, jax.Array, jax.Array, Any, jax.Array | None]:
  """`_group_sums` over `steps` micro-batches, one at a time (a scan); the squared norms
  of every micro-batch's groups [steps * groups] when `norms`."""
  micro = jax.tree.map(lambda a: a.reshape(steps, a.shape[0] // steps, *a.shape[1:]), batch)

  def body(carry, inputs):
    i, b = inputs
    g_sum, l_sum, c_sum, moments, sq = _group_sums(grad_fn, params, b,
                                                   jax.random.fold_in(rng, i), groups, norms)
    return (jax.tree.map(jnp.add, carry[0], g_sum), carry[1] + l_sum, carry[2] + c_sum), (
        sq, moments)

  zero = (jax.tree.map(jnp.zeros_like, params), jnp.zeros(()), jnp.zeros(()))
  (g_sum, l_sum, c_sum), (sq, moments) = jax.lax.scan(body, zero, (jnp.arange(steps), micro))
  return (g_sum, l_sum, c_sum, jax.tree.map(lambda m: jnp.mean(m, 0), moments),
          None if sq is None else sq.reshape(-1))


def _local_gradients(model: nn.Module, params: Any, batch: Batch, rng: jax.Array,
                     groups: int | None, accumulation: int = 1, label_smoothing: float = 0.0
                     ) -> tuple[Any, Metrics, Any, Any]:
  """Inside shard_map: this device's gradient sum, then the global mean gradient.

  Returns (mean gradient over the global batch's real examples, metrics, squared norms
  of the per-group gradient sums [accumulation * groups], or None when groups is None,
  batch norm's batch moments averaged over micro-batches, groups and devices). Masked
  (padding) examples contribute nothing, so a partial last batch is an honest mean over
  fewer examples, as in Keras. Groups split each micro-batch when accumulating. The loss
  is smoothed by `label_smoothing` (`_losses`).
  """
  n_dev = jax.lax.psum(1, DATA)
  mask = batch["mask"]
  count = _psum(jnp.sum(mask)) * targets_per_example(batch)

  def loss_sum(params, x, y, m, rng):
    logits, moments = model.apply({"params": params}, x, train=True, rngs={"dropout": rng},
                                  mutable=["batch_moments"])
    losses, correct = _losses(logits, y, m, label_smoothing)
    return jnp.sum(losses), (jnp.sum(correct), dict(moments.get("batch_moments", {})))

  grad_fn = jax.value_and_grad(loss_sum, has_aux=True)
  norms, parts = groups is not None, groups or 1
  if accumulation > 1:
    g_sum, l_sum, c_sum, moments, group_sq = _accumulate(grad_fn, params, batch, rng,
                                                         accumulation, parts, norms)
  else:
    g_sum, l_sum, c_sum, moments, group_sq = _group_sums(grad_fn, params, batch, rng, parts,
                                                         norms)

  # Weighting each device's gradient by n_dev / count makes the pmean the mean over all
  # real examples; with a full batch this is exactly pmap's pmean of per-device mean
  # gradients.
  weight = n_dev / jnp.maximum(count, 1.0)
  grads = jax.tree.map(lambda g: _pmean(g * weight), g_sum)
  metrics = dict(loss=_psum(l_sum) / jnp.maximum(count, 1.0), correct=_psum(c_sum),
                 count=count)
  return grads, metrics, group_sq, jax.tree.map(_pmean, moments)


def training_loss(model: nn.Module, params: Any, batches: Batch,
                  label_smoothing: float = 0.0) -> jax.Array:
  """The mean training loss over batches stacked on a leading axis, each applied as one
  device applies a batch of k in training (batch norm's statistics of that batch), with
  one fixed dropout mask and the train step's label smoothing: a deterministic function
  of params, whatever the device count, whose Hessian `sgdlab.curvature` measures."""

  def sums(batch):
    logits, _ = model.apply({"params": params}, batch["x"], train=True,
                            rngs={"dropout": jax.random.PRNGKey(0)}, mutable=["batch_moments"])
    losses, _ = _losses(logits, batch["y"], batch["mask"], label_smoothing)
    return jnp.sum(losses), jnp.sum(batch["mask"]) * targets_per_example(batch)

  loss_sums, counts = jax.lax.map(sums, batches)
  return jnp.sum(loss_sums) / jnp.maximum(jnp.sum(counts), 1.0)


def make_grad_fn(model: nn.Module, mesh: Mesh, label_smoothing: float = 0.0
                 ) -> Callable[[Any, Batch], Any]:
  """The data-parallel gradient alone (no dropout rng needed): what tests compare."""

  def local(params, batch):
    return _local_gradients(model, params, batch, jax.random.PRNGKey(0), None,
                            label_smoothing=label_smoothing)[0]

  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(DATA)), out_specs=P(),
                       check_vma=False)


def all_finite(tree: Any) -> jax.Array:
  """True iff every floating-point element of a pytree is finite."""
  floats = [a for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)]
  return _all_finite(floats) if floats else jnp.bool_(True)


def apply_update(tx: optax.GradientTransformation, lr_fn: LrFn, state: TrainState,
                 grads: Any) -> tuple[Any, Any, jax.Array]:
  """One optimizer update from the mean gradient: (params, opt_state, lr_t). Its own
  function so the fixed-k planner can cost it apart from the micro-steps."""
  lr = lr_fn(state.step, state.hparams["learning_rate"], state.hparams["lr_decay"])
  updates, opt_state = tx.update(grads, state.opt_state, state.params, lr=lr)
  return optax.apply_updates(state.params, updates), opt_state, lr


def _guarded(state: TrainState, ok: jax.Array, params: Any, opt_state: Any,
             batch_stats: Any) -> TrainState:
  """The new state where the step is finite; else the old one, with the step recorded in
  diverged_at (the first time)."""
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
  diverged_at = jnp.where((state.diverged_at < 0) & ~ok, state.step, state.diverged_at)
  return state.replace(
      step=jnp.where(ok, state.step + 1, state.step),
      params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
      batch_stats=keep(batch_stats, state.batch_stats), diverged_at=diverged_at)


def _noise_norms(batch: Batch, grads: Any, group_sq: jax.Array, count: jax.Array,
                 parts: int, n_dev: int) -> Metrics:
  """|G_small|^2: mean over devices and the `parts` small batches of each device batch of
  each one's own mean gradient; |G_big|^2: the averaged gradient. Only meaningful on full
  batches (`full`)."""
  local_k = batch["mask"].shape[0]
  b_small = local_k // parts
  per_group = b_small * targets_per_example(batch)  # targets in a group's sum
  small_sq = jnp.mean(group_sq) / jnp.float32(per_group) ** 2
  return dict(g_small_sq=_pmean(small_sq), g_big_sq=_tree_sq_norm(grads),
              b_small=jnp.float32(b_small), b_big=jnp.float32(local_k * n_dev),
              full=(count == local_k * n_dev * targets_per_example(batch)).astype(jnp.float32))


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, lr_fn: LrFn,
                    mesh: Mesh, *, accumulation_steps: int = 1, noise_scale: bool = False,
                    noise_groups: int = 0, check_gradients: bool = True,
                    bn_momentum: float = 0.9, label_smoothing: float = 0.0
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The SGD step on a global batch sharded over `mesh`; not jitted (callers jit).

  `tx` is `sgdlab.optim.optimizer`: its update takes lr_t, which the step computes from
  the hyperparameters in the state. A loss or gradient that is not finite freezes the
  state and records the step in diverged_at. accumulation_steps: micro-batches per
  device per update (module docstring). label_smoothing > 0: the loss (differentiated
  and reported) is against smoothed targets (`_losses`); evaluation's is not.

  Batch norm's running averages move once per update, toward the batch moments
  averaged over devices and micro-batches: r <- bn_momentum r + (1 - bn_momentum) m.

  noise_scale=True also returns the squared gradient norms that the online noise-scale
  estimate needs (sgdlab.noise): the mean over small batches of each one's own mean
  gradient, and the averaged gradient (B_big = k). The small batches are each device's
  batch (each micro-batch, when accumulating) split into `noise_groups` equal parts,
  B_small = k / (devices * accumulation_steps * noise_groups); 0 takes
  `noise_groups_for`'s default. More groups make the tr(Sigma) estimate far less noisy
  (sgdlab.noise) at some speed. The update is the same; only float summation order
  changes (and, with dropout, the masks drawn; with batch norm, each group is
  normalized over its own examples).

  check_gradients=False leaves out the per-step check of every gradient element (one
  more read of the gradients: 7-11% of a k=32 MLP step); the loss is still checked.
  A non-finite gradient then shows in the parameters, which never become finite again,
  and `sgdlab.train.run` reruns such a call with the check (exact semantics, paid
  only when a run breaks).
  """
  n_dev = mesh.size
  groups = noise_groups_for(noise_groups, n_dev, accumulation_steps > 1)

  def local_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    dev = jax.lax.axis_index(DATA)
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), dev)
    # With noise_scale, per-group sums even with one group: the local gradient is needed.
    grads, metrics, group_sq, moments = _local_gradients(
        model, state.params, batch, rng, groups if noise_scale else None, accumulation_steps,
        label_smoothing)
    batch_stats = jax.tree.map(lambda r, m: bn_momentum * r + (1 - bn_momentum) * m,
                               state.batch_stats, moments)

    params, opt_state, lr = apply_update(tx, lr_fn, state, grads)

    ok = jnp.isfinite(metrics["loss"]) & (state.diverged_at < 0)
    if check_gradients:
      ok = ok & _all_finite(grads)
    new_state = _guarded(state, ok, params, opt_state, batch_stats)
    metrics["lr"] = lr
    if noise_scale:
      metrics.update(_noise_norms(batch, grads, group_sq, metrics["count"],
                                  accumulation_steps * groups, n_dev))
    return new_state, metrics

  return jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(DATA)), out_specs=(P(), P()),
                       check_vma=False)


NOISE_NORMS = ("g_small_sq", "g_big_sq", "b_small", "b_big")  # what sgdlab.noise reads


def norms_at_fixed_state(train_step: Callable, state: TrainState,
                         batch_of: Callable[[Any], Batch], xs: Any) -> Metrics:
  """The noise-scale norms of `train_step` (built with noise_scale=True) on the batch
  `batch_of(x)` for each x along xs' leading axis, every one at `state`: one scan, each
  update dropped. A fresh step count per batch gives fresh dropout masks. Used inside
  jit by the trainer's noise probe and `fixed_params.online_at_fixed_params`."""

  def body(_, args):
    t, x = args
    _, metrics = train_step(state.replace(step=state.step + t), batch_of(x))
    return None, {key: metrics[key] for key in NOISE_NORMS}

  steps = jax.tree.leaves(xs)[0].shape[0]
  return jax.lax.scan(body, None, (jnp.arange(steps, dtype=jnp.int32), xs))[1]


def make_eval_step(model: nn.Module, mesh: Mesh
                   ) -> Callable[[Any, Batch], Metrics]:
  """Sums of loss and correct predictions over a sharded, masked batch (no dropout), of
    the model applied with `eval_variables(state)`: parameters and running averages."""

  def local_eval(variables: Any, batch: Batch) -> Metrics:
    logits = model.apply(variables, batch["x"], train=False)
    losses, correct = _losses(logits, batch["y"], batch["mask"])
    return jax.tree.map(_psum, dict(
        loss_sum=jnp.sum(losses), correct=jnp.sum(correct),
        count=jnp.sum(batch["mask"]) * targets_per_example(batch)))

  return jax.shard_map(local_eval, mesh=mesh, in_specs=(P(), P(DATA)), out_specs=P(),
                       check_vma=False)
