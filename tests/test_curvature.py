"""Curvature (sgdlab.curvature) against exact Hessians: Lanczos, HVPs, sharpness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from sgdlab import curvature


def _tiny_mlp_loss(seed=0, n=32, d=6, hidden=8, classes=3):
  k = jax.random.split(jax.random.key(seed), 5)
  x = jax.random.normal(k[0], (n, d))
  y = jax.random.randint(k[1], (n,), 0, classes)
  params = dict(w1=0.5 * jax.random.normal(k[2], (d, hidden)), b1=jnp.zeros(hidden) + 0.1,
                w2=0.5 * jax.random.normal(k[3], (hidden, classes)), b2=jnp.zeros(classes))

  def loss(p):
    logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(n), y])

  return loss, params


def _exact_hessian(loss, params):
  flat, unravel = ravel_pytree(params)
  return np.asarray(jax.hessian(lambda f: loss(unravel(f)))(flat), np.float64), flat


def test_hvp_equals_finite_differences_of_the_gradient():
  loss, params = _tiny_mlp_loss()
  flat, unravel = ravel_pytree(params)
  v = jax.random.normal(jax.random.key(1), flat.shape)
  hv = ravel_pytree(curvature.hvp(loss, params, unravel(v)))[0]
  grad = lambda f: ravel_pytree(jax.grad(loss)(unravel(f)))[0]
  h = 1e-2
  fd = (grad(flat + h * v) - grad(flat - h * v)) / (2 * h)
  np.testing.assert_allclose(hv, fd, rtol=2e-2, atol=2e-3 * float(jnp.max(jnp.abs(fd))))
  hess, _ = _exact_hessian(loss, params)
  np.testing.assert_allclose(hv, hess @ np.asarray(v), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("iterations", [83, 40])  # 83 = every parameter of the tiny MLP
def test_lanczos_top_five_within_one_percent_of_eigh(iterations):
  loss, params = _tiny_mlp_loss()
  hess, flat = _exact_hessian(loss, params)
  assert flat.shape == (83,)
  exact = np.linalg.eigvalsh(hess)[::-1][:5]
  got = curvature.lanczos(loss, params, iterations, jax.random.key(0), top=5)
  np.testing.assert_allclose(got, exact, rtol=1e-2)


def test_lanczos_gives_the_eigenvalues_of_xtx_over_n_for_linear_regression():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 12)) * np.linspace(0.2, 3.0, 12)
  y = rng.normal(size=200)
  loss = lambda w: 0.5 * jnp.mean((jnp.asarray(x, jnp.float32) @ w - y) ** 2)
  exact = np.linalg.eigvalsh(x.T @ x / 200)[::-1]
  got = curvature.lanczos(loss, jnp.zeros(12), 12, jax.random.key(3), top=12)
  np.testing.assert_allclose(got, exact, rtol=1e-4)
  under_jit = jax.jit(lambda w: curvature.lanczos(loss, w, 12, jax.random.key(3), top=3))
  np.testing.assert_allclose(under_jit(jnp.ones(12)), exact[:3], rtol=1e-4)


def test_directional_curvature_is_g_h_g_over_g_g():
  loss, params = _tiny_mlp_loss(seed=2)
  hess, _ = _exact_hessian(loss, params)
  g = np.asarray(ravel_pytree(jax.grad(loss)(params))[0], np.float64)
  expected = g @ hess @ g / (g @ g)
  assert float(curvature.directional_curvature(loss, params)) == pytest.approx(expected,
                                                                               rel=1e-4)


def test_epsilon_sharpness_reaches_the_corner_of_a_convex_quadratic():
  # f(x) = 0.5 sum a_i (x_i - c_i)^2 + 1 at x = c: the box's maximum is at a corner,
  # 0.5 sum a_i (eps (|c_i| + 1))^2, which sign ascent reaches exactly.
  a, c, eps = jnp.asarray([1.0, 4.0, 0.5]), jnp.asarray([0.3, -2.0, 0.0]), 1e-2
  loss = lambda x: 0.5 * jnp.sum(a * (x - c) ** 2) + 1.0
  rise = 0.5 * float(jnp.sum(a * (eps * (jnp.abs(c) + 1)) ** 2))
  got = curvature.epsilon_sharpness(loss, c, jax.random.key(0), epsilon=eps, steps=4)
  assert float(got) == pytest.approx(100 * rise / 2.0, rel=1e-4)
  flat = curvature.epsilon_sharpness(lambda x: jnp.sum(0.0 * x) + 1.0, c,
                                      jax.random.key(0), epsilon=eps)
  assert float(flat) == 0.0


def test_hvp_through_custom_vjp_parts_is_the_exact_product():
  @jax.custom_vjp
  def cube(x):
    return x ** 3

  cube.defvjp(lambda x: (x ** 3, x), lambda x, g: (3 * x ** 2 * g,))
  loss = lambda p: jnp.sum(cube(p["w"]) * p["b"])
  params = dict(w=jnp.asarray([0.5, -1.0, 2.0]), b=jnp.asarray([1.0, 2.0, 3.0]))
  v = dict(w=jnp.asarray([1.0, 0.0, -1.0]), b=jnp.asarray([0.5, 1.0, 0.0]))
  hess, flat = _exact_hessian(lambda p: jnp.sum(p["w"] ** 3 * p["b"]), params)
  got = ravel_pytree(curvature.hvp(loss, params, v))[0]
  np.testing.assert_allclose(got, hess @ np.asarray(ravel_pytree(v)[0]), rtol=1e-6)


def test_lanczos_runs_on_sgdlabs_cnn():
  from sgdlab.studies import hvp_cost
  loss_fn, params = hvp_cost.model_loss("cnn", 4)
  (top,) = curvature.lanczos(loss_fn, params, 3, jax.random.key(0))
  assert np.isfinite(float(top)) and float(top) > 0
