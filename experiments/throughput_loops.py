"""The training loops the throughput benchmark and the device check time, sgdlab's and
the hand-written ones it is measured against.

Every loop trains on data already on the device, from the same initial parameters and
in sgdlab's batch order (a permutation from fold_in(fold_in(PRNGKey(seed), 1), epoch)),
so after an epoch all of them hold the same parameters: like for like.
* sgdlab: the Run the trainer builds (`sgdlab.train.run.create_run`), driven as
  `sgdlab.train.loop` drives it (one advance call per epoch, one host sync).
* JAX scan: the whole epoch in one jitted `lax.scan` over gathered batches.
* JAX per-step: Flax's examples' pattern, one jitted step per batch from Python.
Both hand-written loops run the model as a user would write it in plain Flax/JAX:
`nn.Conv` and `nn.max_pool` for the CNN, a jnp MLP.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from sgdlab import config as config_lib
from sgdlab import data
from sgdlab.train import run as run_lib

SGDLAB, JAX_LOOP, JAX_STEP, TORCH = "sgdlab", "jax loop", "jax per-step", "pytorch"
HIDDEN = (512, 512)
CNN_FEATURES, CNN_DENSE = (32, 64), 128  # Keras' mnist_cnn


@dataclasses.dataclass
class Loop:
  """A compiled, warmed-up training loop: `run_epoch(e)` trains epoch e and blocks."""

  name: str
  run_epoch: Callable[[int], float]  # returns the epoch's last-step loss
  params: Callable[[], list[np.ndarray]]  # every parameter, in a fixed order


def machine_description() -> str:
  """CPU model and core count (Linux), or the platform string elsewhere."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      model = next(line.split(":", 1)[1].strip() for line in f
                   if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return f"{model}, {os.cpu_count()} cores"


def load_mnist() -> data.Dataset:
  """The bundled 4,000 / 1,000 MNIST split, as the classic experiment uses it."""
  return data.load(config_lib.default_config().data)


def bench_config(model: str, k: int, lr: float, decay: float, seed: int,
                 hidden: tuple[int, ...] = HIDDEN, features: tuple[int, ...] = CNN_FEATURES,
                 dense: int = CNN_DENSE):
  """Plain SGD with inverse-time decay; no dropout, so that every loop can match."""
  c = config_lib.default_config()
  c.model.name, c.model.hidden, c.model.dropout = model, tuple(hidden), 0.0
  c.model.features, c.model.dense = tuple(features), dense
  c.model.conv_dropout = c.model.dense_dropout = 0.0
  c.optimizer.name, c.schedule.name = "sgd", "inverse_time"
  c.batch_size, c.learning_rate, c.lr_decay, c.seed = k, lr, decay, seed
  return c


def mlp_layers(params: Any) -> list[tuple[Any, Any]]:
  """sgdlab's MLP parameters as [(kernel [in, out], bias)], input layer first."""
  dense = sorted((n for n in params if n.startswith("dense")), key=lambda n: int(n[5:]))
  return [(params[n]["kernel"], params[n]["bias"]) for n in [*dense, "logits"]]


def flat(tree: Any) -> list[np.ndarray]:
  return [np.array(a) for a in jax.tree.leaves(tree)]


def make_sgdlab_loop(dataset: data.Dataset, k: int, mesh: Mesh, *, lr: float, decay: float,
                     seed: int = 0, model: str = "mlp", **sizes) -> Loop:
  """sgdlab's own Run, built and driven as `sgdlab.train.loop` does."""
  config = bench_config(model, k, lr, decay, seed, **sizes)
  resolved = config_lib.resolve(config, n_devices=mesh.size, spec=dataset.spec())
  run = run_lib.create_run(resolved, dataset, mesh)
  box = dict(state=run.init_state())

  def run_epoch(e: int) -> float:
    box["state"], metrics = run.advance(box["state"], run.order(e))
    metrics = jax.device_get(metrics)  # the loop's one sync per epoch
    if int(box["state"].diverged_at) >= 0:
      raise FloatingPointError(f"sgdlab diverged at k={k}; lower --learning_rate")
    return float(metrics["loss"][-1])

  def params():
    p = box["state"].params
    return flat(mlp_layers(p) if model == "mlp" else p)

  return Loop(SGDLAB, run_epoch, params)


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


def make_jax_loop(dataset: data.Dataset, k: int, *, lr: float, decay: float, seed: int = 0,
                  model: str = "mlp", pattern: str = "scan", params: Any = None,
                  hidden: tuple[int, ...] = HIDDEN, features: tuple[int, ...] = CNN_FEATURES,
                  dense: int = CNN_DENSE, device: jax.Device | None = None) -> Loop:
  """A hand-written loop: `pattern` "scan" (one jitted epoch) or "step" (jit per step).

  `params` sets the initial parameters (for the MLP [(kernel, bias)], for the CNN
  flax's tree); by default the MLP starts from `init_mlp`, the CNN from flax's init.
  """
  device = jax.devices()[0] if device is None else device
  n = dataset.n_train
  x = jax.device_put(dataset.unit().x_train, device)
  y = jax.device_put(dataset.y_train, device)
  if model == "mlp":
    apply = mlp_logits
    if params is None:
      params = init_mlp(jax.random.PRNGKey(seed),
                        (int(np.prod(x.shape[1:])), *hidden, dataset.num_classes))
  else:
    net = KerasCNN(tuple(features), dense, dataset.num_classes)
    apply = lambda p, xb: net.apply({"params": p}, xb)
    if params is None:
      params = net.init(jax.random.PRNGKey(seed), x[:1])["params"]
  tx = optax.sgd(lambda t: lr / (1.0 + decay * t))
  full, rest = divmod(n, k)

  def sgd_step(carry, idx):
    p, opt_state = carry
    loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        apply(p, x[idx]), y[idx]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt_state = tx.update(grads, opt_state)
    return (optax.apply_updates(p, updates), opt_state), loss

  def epoch(p, opt_state, key, e):
    order = jax.random.permutation(jax.random.fold_in(key, e), n)
    carry, losses = jax.lax.scan(sgd_step, (p, opt_state), order[:full * k].reshape(full, k))
    if rest:  # the last partial batch, at its own size
      carry, last = sgd_step(carry, order[full * k:])
      losses = jnp.append(losses, last)
    return (*carry, losses)

  params = jax.device_put(params, device)
  # Placed like the outputs, so that the second call does not compile again.
  box = dict(p=params, opt_state=jax.device_put(tx.init(params), device))
  key = jax.device_put(jax.random.fold_in(jax.random.PRNGKey(seed), 1), device)
  if pattern == "scan":
    epoch_fn = jax.jit(epoch, donate_argnums=(0, 1))

    def run_epoch(e: int) -> float:
      box["p"], box["opt_state"], losses = epoch_fn(box["p"], box["opt_state"], key,
                                                    jnp.int32(e))
      return float(jax.device_get(losses)[-1])
  elif pattern == "step":
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
  else:
    raise ValueError(f"pattern must be 'scan' or 'step', got {pattern!r}")
  name = JAX_LOOP if pattern == "scan" else JAX_STEP
  return Loop(name, run_epoch, lambda: flat(box["p"]))


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


def max_param_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
  """Largest absolute difference between two flat parameter lists."""
  assert len(a) == len(b), (len(a), len(b))
  return max(float(np.max(np.abs(p - q))) for p, q in zip(a, b))
