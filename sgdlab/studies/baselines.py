"""The hand-written training loops sgdlab's training is measured against.

Each trains on data already on the device, from given initial parameters and in
sgdlab's batch order (a permutation from fold_in(fold_in(PRNGKey(seed), 1), epoch)),
so after an epoch it holds the parameters sgdlab's Run holds: like for like.
* JAX scan: the whole epoch in one jitted `lax.scan` over gathered batches.
* JAX per-step: Flax's examples' pattern, one jitted step per batch from Python.
* PyTorch: a plain CPU MLP loop (no DataLoader), if torch imports.
* Flax per-step (`FlaxLoop`): the same flax module as sgdlab's Run, batches cut on the
  host with numpy, optax.sgd; batch norm's running averages updated by hand.
The JAX loops run the model as a user would write it in plain Flax/JAX: `nn.Conv` and
`nn.max_pool` for the CNN, a jnp MLP.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgdlab import data
from sgdlab.train import run as run_lib, step

JAX_LOOP, JAX_STEP, TORCH, FLAX_STEP = "jax loop", "jax per-step", "pytorch", "flax per-step"
HIDDEN = (512, 512)
CNN_FEATURES, CNN_DENSE = (32, 64), 128  # Keras' mnist_cnn


@dataclasses.dataclass
class Loop:
  """A compiled, warmed-up training loop: `run_epoch(e)` trains epoch e and blocks."""

  name: str
  run_epoch: Callable[[int], float]  # returns the epoch's last-step loss
  params: Callable[[], list[np.ndarray]]  # every parameter, in a fixed order


def mlp_layers(params: Any) -> list[tuple[Any, Any]]:
  """sgdlab's MLP parameters as [(kernel [in, out], bias)], input layer first."""
  dense = sorted((n for n in params if n.startswith("dense")), key=lambda n: int(n[5:]))
  return [(params[n]["kernel"], params[n]["bias"]) for n in [*dense, "logits"]]


def flat(tree: Any) -> list[np.ndarray]:
  return [np.array(a) for a in jax.tree.leaves(tree)]


def sgdlab_params(params: Any, model: str) -> list[np.ndarray]:
  """sgdlab's parameters in the hand-written loops' order (flat)."""
  return flat(mlp_layers(params) if model == "mlp" else params)


def init_mlp(key: jax.Array, sizes: tuple[int, ...]) -> list[tuple[jax.Array, jax.Array]]:
  """LeCun-normal kernels and zero biases (flax.linen.Dense's defaults)."""
  layers = []
  for key, (n_in, n_out) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes, sizes[1:])):
    # 0.8796...: the std of a unit normal truncated to [-2, 2], divided out as flax does.
    w = jax.random.truncated_normal(key, -2.0, 2.0, (n_in, n_out)) / (0.87962566 * n_in**0.5)
    layers.append((w, jnp.zeros((n_out,))))
  return layers


def mlp_logits(layers, x):
  x = x.reshape(x.shape[0], -1)
  for w, b in layers[:-1]:
    x = jax.nn.relu(x @ w + b)
  w, b = layers[-1]
  return x @ w + b


class KerasCNN(nn.Module):
  """Keras' mnist_cnn as plain Flax (no dropout): what sgdlab's CNN is measured against."""

  features: tuple[int, ...] = CNN_FEATURES
  dense: int = CNN_DENSE
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    for i, f in enumerate(self.features):
      x = nn.relu(nn.Conv(f, (3, 3), padding="VALID", name=f"conv{i}")(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2)).reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.dense, name="dense")(x))
    return nn.Dense(self.num_classes, name="logits")(x)


def as_hand_params(leaves: list[np.ndarray], model: str, dataset: data.Dataset,
                   features: tuple[int, ...] = CNN_FEATURES, dense: int = CNN_DENSE) -> Any:
  """Flat parameters (`sgdlab_params`) in the hand-written loop's structure."""
  if model == "mlp":
    return [(leaves[i], leaves[i + 1]) for i in range(0, len(leaves), 2)]
  net = KerasCNN(tuple(features), dense)
  tree = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), dataset.x_train[:1]))["params"]
  return jax.tree.unflatten(jax.tree.structure(tree), leaves)


def _model(dataset: data.Dataset, x: jax.Array, model: str, params: Any, seed: int,
           hidden: tuple[int, ...], features: tuple[int, ...], dense: int):
  """(apply(params, x), initial params) of the hand-written MLP or CNN."""
  if model == "mlp":
    if params is None:
      params = init_mlp(jax.random.PRNGKey(seed),
                        (int(np.prod(x.shape[1:])), *hidden, dataset.num_classes))
    return mlp_logits, params
  net = KerasCNN(tuple(features), dense, dataset.num_classes)
  if params is None:
    params = net.init(jax.random.PRNGKey(seed), x[:1])["params"]
  return (lambda p, xb: net.apply({"params": p}, xb)), params


def make_jax_loop(dataset: data.Dataset, k: int, *, lr: float, decay: float, seed: int = 0,
                  model: str = "mlp", pattern: str = "scan", params: Any = None,
                  hidden: tuple[int, ...] = HIDDEN, features: tuple[int, ...] = CNN_FEATURES,
                  dense: int = CNN_DENSE, device: jax.Device | None = None) -> Loop:
  """A hand-written loop: `pattern` "scan" (one jitted epoch) or "step" (jit per step).

  `params` sets the initial parameters (for the MLP [(kernel, bias)], for the CNN
  flax's tree); by default the MLP starts from `init_mlp`, the CNN from flax's init.
  """
  if pattern not in ("scan", "step"):
    raise ValueError(f"pattern must be 'scan' or 'step', got {pattern!r}")
  device = jax.devices()[0] if device is None else device
  n = dataset.n_train
  x = jax.device_put(dataset.unit().x_train, device)
  y = jax.device_put(dataset.y_train, device)
  apply, params = _model(dataset, x, model, params, seed, hidden, features, dense)
  tx = optax.sgd(lambda t: lr / (1.0 + decay * t))

  def sgd_step(carry, idx):
    p, opt_state = carry
    loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        apply(p, x[idx]), y[idx]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt_state = tx.update(grads, opt_state)
    return (optax.apply_updates(p, updates), opt_state), loss

  params = jax.device_put(params, device)
  # Placed like the outputs, so that the second call does not compile again.
  box = dict(p=params, opt_state=jax.device_put(tx.init(params), device))
  key = jax.device_put(jax.random.fold_in(jax.random.PRNGKey(seed), 1), device)
  epoch_fn = (_scan_epoch if pattern == "scan" else _step_epoch)(sgd_step, box, key, n, k)
  return Loop(JAX_LOOP if pattern == "scan" else JAX_STEP, epoch_fn, lambda: flat(box["p"]))


def _scan_epoch(sgd_step, box, key, n: int, k: int) -> Callable[[int], float]:
  """One jitted program per epoch: a scan over the full batches, then the partial one."""
  full, rest = divmod(n, k)

  def epoch(p, opt_state, key, e):
    order = jax.random.permutation(jax.random.fold_in(key, e), n)
    carry, losses = jax.lax.scan(sgd_step, (p, opt_state), order[:full * k].reshape(full, k))
    if rest:  # the last partial batch, at its own size
      carry, last = sgd_step(carry, order[full * k:])
      losses = jnp.append(losses, last)
    return (*carry, losses)

  epoch_fn = jax.jit(epoch, donate_argnums=(0, 1))

  def run_epoch(e: int) -> float:
    box["p"], box["opt_state"], losses = epoch_fn(box["p"], box["opt_state"], key,
                                                  jnp.int32(e))
    return float(jax.device_get(losses)[-1])

  return run_epoch


def _step_epoch(sgd_step, box, key, n: int, k: int) -> Callable[[int], float]:
  """Flax's examples' pattern: one jitted step per batch, dispatched from Python."""
  step_fn = jax.jit(sgd_step, donate_argnums=(0,))
  order_fn = jax.jit(lambda key, e: jax.random.permutation(jax.random.fold_in(key, e), n))

  def run_epoch(e: int) -> float:
    order = order_fn(key, jnp.int32(e))
    carry = (box["p"], box["opt_state"])
    for start in range(0, n, k):
      carry, loss = step_fn(carry, order[start:start + k])
      loss.block_until_ready()  # as the multi-device CPU deadlock requires
    box["p"], box["opt_state"] = carry
    return float(loss)

  return run_epoch


def torch_available() -> bool:
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def make_torch_loop(dataset: data.Dataset, k: int, *, lr: float, decay: float,
                    seed: int = 0, hidden: tuple[int, ...] = HIDDEN, threads: int = 2) -> Loop:
  """A plain PyTorch CPU MLP loop: shuffle the tensors once per epoch, slice batches."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn as tnn  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(threads)
  torch.manual_seed(seed)
  n = dataset.n_train
  x = torch.from_numpy(dataset.unit().x_train.reshape(n, -1).copy())
  y = torch.from_numpy(dataset.y_train.astype(np.int64))
  sizes = (x.shape[1], *hidden, dataset.num_classes)
  layers = []
  for n_in, n_out in zip(sizes, sizes[1:]):
    layers += [tnn.Linear(n_in, n_out), tnn.ReLU()]
  model = tnn.Sequential(*layers[:-1])
  opt = torch.optim.SGD(model.parameters(), lr=lr)
  loss_fn = tnn.CrossEntropyLoss()
  generator = torch.Generator().manual_seed(seed)
  count = [0]

  def run_epoch(e: int) -> float:
    del e  # torch's own stream gives the order
    order = torch.randperm(n, generator=generator)
    xs, ys = x[order], y[order]
    for i in range(0, n, k):
      for group in opt.param_groups:
        group["lr"] = lr / (1.0 + decay * count[0])
      opt.zero_grad(set_to_none=True)
      loss = loss_fn(model(xs[i:i + k]), ys[i:i + k])
      loss.backward()
      opt.step()
      count[0] += 1
    return float(loss.item())

  def params():
    linears = [m for m in model if isinstance(m, tnn.Linear)]
    return [a for m in linears
            for a in (m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())]

  return Loop(TORCH, run_epoch, params)


class FlaxLoop:
  """The loop most Flax users write: a jitted step per batch, batches cut on the host.

  The same flax module as `run` (`run.program.model`), from the state `initial`; each
  epoch's batches are sgdlab's order, fetched by `prepare(epoch)` before the clock
  starts. Batch norm's running averages are updated from the "batch_moments" the layer
  records in training, r <- m r + (1 - m) batch moment, as sgdlab's step does.
  """

  def __init__(self, run: run_lib.Run, initial: step.TrainState, *, lr: float,
               nesterov: bool, bn_momentum: float, device: jax.Device):
    self.run, self.seq_len = run, run.program.first.spec.seq_len
    self.x, self.y = run.dataset.x_train, run.dataset.y_train  # host numpy
    self.window = np.arange(self.seq_len + 1)
    # Fresh copies: the step donates its inputs, and sgdlab keeps using its own.
    self.params = jax.device_put(jax.device_get(initial.params), device)
    self.batch_stats = jax.device_put(jax.device_get(initial.batch_stats), device)
    tx = optax.sgd(lr, momentum=0.9, nesterov=nesterov)
    self.opt_state = jax.device_put(tx.init(self.params), device)
    self.train_step = _flax_step(run.program.model, tx, bn_momentum,
                                 bool(jax.tree.leaves(self.batch_stats)))
    self.order: np.ndarray | None = None
    self.last_loss = math.nan

  def prepare(self, epoch: int) -> None:
    """The epoch's batch order [steps, k] on the host (untimed)."""
    self.order = np.asarray(jax.device_get(self.run.host_order(epoch)["idx"]))

  def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Examples idx, or for text the windows starting at idx (read circularly)."""
    if not self.seq_len:
      return self.x[idx], self.y[idx]
    seq = self.x[(idx[:, None] + self.window) % len(self.x)]
    return seq[:, :-1], seq[:, 1:]

  def run_epoch(self, epoch: int) -> float:
    """Train on the prepared epoch's batches; blocks at the end, as Flax's examples sync
    once they fetch an epoch's metrics."""
    del epoch  # prepared
    p, bs, opt_state = self.params, self.batch_stats, self.opt_state
    for idx in self.order:
      p, bs, opt_state, loss = self.train_step(p, bs, opt_state, *self.batch(idx))
    self.params, self.batch_stats, self.opt_state = jax.block_until_ready((p, bs, opt_state))
    self.last_loss = float(loss)
    return self.last_loss

  def variables(self) -> dict[str, Any]:
    return dict(params=self.params, batch_stats=self.batch_stats)


def _flax_step(model: nn.Module, tx: optax.GradientTransformation, bn_momentum: float,
               has_bn: bool) -> Callable:
  """train_step(params, batch_stats, opt_state, x, y), jitted, inputs donated."""

  def loss_fn(params, batch_stats, x, y):
    if has_bn:
      logits, new = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                train=True, mutable=["batch_moments"])
      moments = dict(new["batch_moments"])
    else:
      logits, moments = model.apply({"params": params}, x, train=True), {}
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y.astype(jnp.int32))
    return loss.mean(), moments  # per example, or per token for the LM

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def train_step(params, batch_stats, opt_state, x, y):
    (loss, moments), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    batch_stats = jax.tree.map(lambda r, m: bn_momentum * r + (1 - bn_momentum) * m,
                               batch_stats, moments)
    return params, batch_stats, opt_state, loss

  return train_step
