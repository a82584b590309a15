"""The im2col-gradient convolution is XLA's convolution in values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgdlab import config as config_lib
from sgdlab.errors import ConfigError
from sgdlab.models import cnn, conv
from sgdlab import models

CASES = [  # input shape, window, strides, padding
    ((5, 9, 9, 3), (3, 3), (1, 1), "VALID"),
    ((7, 10, 10, 4), (3, 3), (2, 2), "SAME"),
    ((3, 8, 8, 2), (1, 1), (2, 2), "VALID"),
    ((4, 9, 7, 3), (3, 2), (1, 2), ((1, 2), (0, 1))),
]


def _grads(impl, x, w, strides, padding):
  loss = lambda x, w: jnp.sum(jnp.sin(conv.conv2d(x, w, strides, padding, impl)))
  return jax.value_and_grad(loss, (0, 1))(x, w)


@pytest.mark.parametrize("shape,window,strides,padding", CASES)
def test_im2col_gradients_equal_xla_gradients(shape, window, strides, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  w = jax.random.normal(jax.random.PRNGKey(1), (*window, shape[-1], 6))
  (v_xla, g_xla), (v_im, g_im) = (_grads(i, x, w, strides, padding) for i in ("xla", "im2col"))
  assert v_xla == v_im  # the forward pass is XLA's own
  for a, b in zip(g_xla, g_im):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(a))))


@pytest.mark.parametrize("shape,window,strides,padding", CASES)
def test_jvp_form_has_xlas_gradients_and_hessian_vector_products(shape, window, strides,
                                                                 padding, monkeypatch):
  monkeypatch.setattr(conv, "_CHUNK_BYTES", 1)  # one example per chunk: the scans run
  monkeypatch.setattr(conv, "_DX_CHUNK_BYTES", 1)
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  w = jax.random.normal(jax.random.PRNGKey(1), (*window, shape[-1], 6))
  loss = lambda impl: lambda x, w: jnp.sum(jnp.sin(conv.conv2d(x, w, strides, padding, impl)))
  tangents = (jax.random.normal(jax.random.PRNGKey(2), x.shape),
              jax.random.normal(jax.random.PRNGKey(3), w.shape))
  for product in (jax.grad, lambda f, argnums: lambda x, w: jax.jvp(  # forward over reverse
      jax.grad(f, argnums), (x, w), tangents)[1]):
    want, got = (product(loss(i), (0, 1))(x, w) for i in ("xla", "im2col_jvp"))
    for a, b in zip(want, got):
      np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(a))))


def test_curvature_form_keeps_parameters_and_has_no_custom_vjp():
  net = cnn.CNN(features=(3, 4), dense=8, dropout=0.0, dense_dropout=0.0, conv_impl="im2col")
  x = jax.random.normal(jax.random.PRNGKey(7), (2, 10, 10, 1))
  params = net.init(jax.random.PRNGKey(8), x)
  curv = models.for_curvature(net)
  assert curv.conv_impl == "im2col_jvp" and conv.curvature_impl("xla") == "xla"
  np.testing.assert_array_equal(curv.apply(params, x), net.apply(params, x))
  jaxpr = lambda m: str(jax.make_jaxpr(lambda p: m.apply(p, x).sum())(params))
  assert "custom_vjp_call" in jaxpr(net) and "custom_vjp_call" not in jaxpr(curv)


@pytest.mark.parametrize("batch", [7, 12])
def test_kernel_gradient_over_chunks_with_a_padded_last_chunk(batch, monkeypatch):
  # Tiny chunks force the scan; a prime batch forces padding with zero examples.
  monkeypatch.setattr(conv, "_CHUNK_BYTES", 5 * 5 * 9 * 2 * 4 * 5)
  x = jax.random.normal(jax.random.PRNGKey(2), (batch, 7, 7, 2))
  dy = jax.random.normal(jax.random.PRNGKey(3), (batch, 5, 5, 3))
  w = jnp.zeros((3, 3, 2, 3))
  want = jax.vjp(lambda w: conv.conv2d(x, w, impl="xla"), w)[1](dy)[0]
  got = conv.im2col_kernel_grad(x, dy, (3, 3), (1, 1), ((0, 0), (0, 0)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert conv._chunk_size(7, 5) == 5 and conv._chunk_size(12, 5) == 4


def test_input_gradient_over_chunks_equals_one_convolution(monkeypatch):
  monkeypatch.setattr(conv, "_DX_CHUNK_BYTES", 7 * 7 * 9 * 3 * 4 * 3)  # 3 per chunk
  dy = jax.random.normal(jax.random.PRNGKey(3), (7, 5, 5, 3))
  w = jax.random.normal(jax.random.PRNGKey(4), (3, 3, 2, 3))
  pads = ((0, 0), (0, 0))
  got = conv.chunked_input_grad(dy, w, (7, 7), (1, 1), pads)
  want = conv.input_grad(dy, w, (7, 7), (1, 1), pads)
  assert got.shape == (7, 7, 7, 2)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_kernel_gradient_is_a_matmul_not_a_convolution():
  x = jnp.ones((4, 6, 6, 2))
  w = jnp.ones((3, 3, 2, 3))
  hlo = lambda impl: jax.jit(jax.grad(lambda w: conv.conv2d(x, w, impl=impl).sum())).lower(
      w).as_text()
  assert hlo("xla").count("convolution(") >= 1
  assert hlo("im2col").count("convolution(") == 0  # x is constant: no dx, no conv grad
  assert "dot_general" in hlo("im2col")


def test_auto_takes_the_matmul_gradient_on_cpu_only():
  assert conv.resolve_impl("auto") == ("im2col" if jax.default_backend() == "cpu" else "xla")
  with pytest.raises(ValueError, match="conv impl"):
    conv.resolve_impl("fast")


def test_conv_module_is_nn_conv_in_parameters_and_values():
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 8, 8, 3))
  ours, theirs = conv.Conv(5, (3, 3), impl="im2col"), nn.Conv(5, (3, 3), padding="VALID")
  p = theirs.init(jax.random.PRNGKey(5), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(5), x)) == jax.tree.map(
      jnp.shape, p)
  np.testing.assert_allclose(ours.apply(p, x), theirs.apply(p, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("ties", [False, True])
def test_pool_is_max_pool_in_values_and_gradient_with_odd_sides(ties):
  x = jax.random.normal(jax.random.PRNGKey(6), (2, 7, 6, 3))
  if ties:  # flat regions, as an image background gives after a conv with a bias
    x = jnp.round(x)
  ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(cnn.max_pool_2x2(x), ref(x))
  g = jax.random.normal(jax.random.PRNGKey(9), ref(x).shape)
  grad = lambda f: jax.vjp(f, x)[1](g)[0]
  np.testing.assert_array_equal(grad(cnn.max_pool_2x2), grad(ref))


def test_cnn_gradients_under_vmap_and_scan_equal_xla():
  """A population (vmap) of CNN steps inside a scan, as the Run compiles them."""
  x = jax.random.normal(jax.random.PRNGKey(7), (2, 3, 4, 10, 10, 1))  # [P, steps, k, ...]
  nets = {i: cnn.CNN(features=(3, 4), dense=8, dropout=0.0, dense_dropout=0.0,
                     conv_impl=i) for i in ("xla", "im2col")}
  params = nets["xla"].init(jax.random.PRNGKey(8), x[0, 0])
  params = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), params)

  def grads(net):
    def member(p, xs):
      g = lambda p, xb: jax.grad(lambda p: net.apply(p, xb).sum())(p)
      return jax.lax.scan(lambda c, xb: (c, g(p, xb)), 0, xs)[1]
    return jax.jit(jax.vmap(member))(params, x)

  for a, b in zip(jax.tree.leaves(grads(nets["xla"])), jax.tree.leaves(grads(nets["im2col"]))):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(a))))


def test_config_names_a_bad_conv_impl():
  c = config_lib.default_config().model
  c.conv_impl = "cudnn"
  with pytest.raises(ConfigError, match="model.conv_impl"):
    models.validate(c)
