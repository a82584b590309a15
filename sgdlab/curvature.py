"""Curvature of the training loss: Hessian-vector products, Lanczos, sharpness.

Pure functions of a scalar loss `loss_fn(params)` (the caller fixes the batches), so they
run on any model, inside or outside jit:

- `hvp`: H v by forward-over-reverse differentiation (Pearlmutter 1994), one JVP of the
  gradient: about the cost of two to three gradients, and no Hessian is ever formed.
- `lanczos`: the top eigenvalues of H from m Hessian-vector products (Lanczos 1950, with
  full reorthogonalization, as Ghorbani et al. 2019 use for neural-network spectra):
  lambda_max is the sharpness of Keskar et al. (2017) and the quantity Cohen et al.
  (2021) found full-batch GD drives to 2 / lr ("edge of stability").
- `directional_curvature`: g^T H g / |g|^2, the curvature along the step SGD takes.
- `epsilon_sharpness`: Keskar et al.'s (2017, Metric 2.1) relative rise of the loss in the
  box |delta_i| <= eps (|x_i| + 1), maximised by projected sign-gradient ascent (they used
  L-BFGS-B; any ascent gives a lower bound on the maximum).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

LossFn = Callable[[Any], jax.Array]


def _tree_dot(a: Any, b: Any) -> jax.Array:
  """The inner product of two trees of the same structure."""
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _forward_over_reverse(loss_fn: LossFn, params: Any, v: Any) -> Any:
  return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def _reverse_over_reverse(loss_fn: LossFn, params: Any, v: Any) -> Any:
  return jax.grad(lambda p: _tree_dot(jax.grad(loss_fn)(p), v))(params)


def hvp_fn(loss_fn: LossFn, params: Any) -> Callable[[Any], Any]:
  """v -> H v at params: forward over reverse; where the loss has custom-VJP parts,
  which JAX cannot differentiate forward, reverse over reverse (the gradient of g(p)'v:
  the same product, about twice the memory, and on XLA:CPU 17x a gradient for a CNN of
  custom-VJP convolutions, hence `models.for_curvature`). Chosen once, from the jaxpr."""
  jaxpr = str(jax.make_jaxpr(loss_fn)(params))
  product = _reverse_over_reverse if "custom_vjp_call" in jaxpr else _forward_over_reverse
  return lambda v: product(loss_fn, params, v)


def hvp(loss_fn: LossFn, params: Any, v: Any) -> Any:
  """H v, H the Hessian of loss_fn at params, v a tree shaped like params (`hvp_fn`)."""
  return hvp_fn(loss_fn, params)(v)


def lanczos(loss_fn: LossFn, params: Any, iterations: int, key: jax.Array,
            top: int = 1) -> jax.Array:
  """The `top` largest eigenvalues of the Hessian of loss_fn at params (descending), the
  Ritz values of `iterations` Lanczos steps from a random start. Computed in float32 with
  every new vector reorthogonalized against all earlier ones; `iterations` at least the
  parameter count gives the whole spectrum, ~20-30 resolve the top few of a network."""
  flat, unravel = ravel_pytree(params)
  n = flat.shape[0]
  m = int(iterations)
  product = hvp_fn(loss_fn, params)
  matvec = lambda x: ravel_pytree(product(unravel(x.astype(flat.dtype))))[0]

  def body(i, carry):
    basis, alphas, betas = carry
    w = matvec(basis[i]).astype(jnp.float32)
    alpha = jnp.vdot(w, basis[i])
    # Full reorthogonalization (twice is enough, Parlett): rows past i are still zero.
    for _ in range(2):
      w = w - basis.T @ (basis @ w)
    beta = jnp.linalg.norm(w)
    nxt = jnp.where(beta > 1e-6 * (jnp.abs(alpha) + 1e-30), w / beta, 0.0)
    return basis.at[i + 1].set(nxt), alphas.at[i].set(alpha), betas.at[i].set(beta)

  v0 = jax.random.normal(key, (n,), jnp.float32)
  basis = jnp.zeros((m + 1, n), jnp.float32).at[0].set(v0 / jnp.linalg.norm(v0))
  _, alphas, betas = jax.lax.fori_loop(
      0, m, body, (basis, jnp.zeros(m, jnp.float32), jnp.zeros(m, jnp.float32)))
  tridiagonal = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
  ritz = jnp.linalg.eigvalsh(tridiagonal)
  return ritz[::-1][:top]


def directional_curvature(loss_fn: LossFn, params: Any) -> jax.Array:
  """g^T H g / |g|^2 at params, g the gradient: the curvature along the gradient step."""
  g = jax.grad(loss_fn)(params)
  hg = hvp_fn(loss_fn, params)(g)
  return _tree_dot(g, hg) / _tree_dot(g, g)


def epsilon_sharpness(loss_fn: LossFn, params: Any, key: jax.Array, epsilon: float = 1e-3,
                      steps: int = 10) -> jax.Array:
  """100 (max_{delta in box} f(x + delta) - f(x)) / (1 + f(x)) (Keskar et al. 2017),
  box |delta_i| <= epsilon (|x_i| + 1), by `steps` projected sign-gradient ascent steps
  of 2 epsilon (|x_i| + 1) / steps each from a uniform random point of the box (at a
  minimum the gradient is zero: a start at delta = 0 would not move)."""
  base = loss_fn(params)
  bound = jax.tree.map(lambda x: epsilon * (jnp.abs(x) + 1.0), params)
  shifted = lambda d: loss_fn(jax.tree.map(jnp.add, params, d))

  def ascend(_, delta):
    g = jax.grad(shifted)(delta)
    return jax.tree.map(lambda d, gi, b: jnp.clip(d + 2.0 * b / steps * jnp.sign(gi), -b, b),
                        delta, g, bound)

  leaves, tree = jax.tree.flatten(bound)
  keys = jax.random.split(key, len(leaves))
  start = jax.tree.unflatten(tree, [jax.random.uniform(k, b.shape, b.dtype, -1.0, 1.0) * b
                                    for k, b in zip(keys, leaves)])
  delta = jax.lax.fori_loop(0, int(steps), ascend, start)
  best = jnp.maximum(shifted(delta), base)
  return 100.0 * (best - base) / (1.0 + base)
