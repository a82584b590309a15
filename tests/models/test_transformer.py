"""The causal byte-level Transformer: shapes, causality, names, input dtypes, remat, and
logits equal to a numpy re-implementation from the parameters."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgdlab.models.transformer import Transformer


def _tiny(**overrides) -> Transformer:
  fields = dict(vocab_size=256, seq_len=8, width=16, depth=2, heads=2, mlp_ratio=2)
  fields.update(overrides)
  return Transformer(**fields)


def _tokens(batch=2, length=8, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (batch, length)).astype(np.int32)


def _shapes(model: Transformer):
  """The variables' shapes and dtypes, traced, never compiled."""
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, model.seq_len)))


def _init(model: Transformer, seed: int = 0):
  """Random variables of the model's shapes (LayerNorm scales near 1, the rest N(0, 0.2)):
  a compiled init per test would take most of the file's time, and parameters far from
  init make the comparisons below see every one of them."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    base = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
    return jnp.asarray(base + 0.2 * rng.normal(size=leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, _shapes(model))


@functools.partial(jax.jit, static_argnames=("model", "train"))
def _apply(model: Transformer, variables, x, train=False, rng=None):
  rngs = {"dropout": rng} if rng is not None else None
  return model.apply(variables, x, train=train, rngs=rngs)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shape_and_float32_logits(dtype):
  model = _tiny(dtype=dtype)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(_shapes(model)))
  variables = _init(model)
  for length in (8, 5):  # shorter than the context works too
    logits = _apply(model, variables, _tokens(2, length))
    assert logits.shape == (2, length, 256) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()


def test_bfloat16_is_close_to_float32():
  variables = _init(_tiny())
  x = _tokens(2, 8)
  a = np.asarray(_apply(_tiny(), variables, x))
  b = np.asarray(_apply(_tiny(dtype=jnp.bfloat16), variables, x))
  assert not np.array_equal(a, b)  # it really computed in bfloat16
  np.testing.assert_allclose(b, a, atol=0.05)


def test_layer_names():
  params = _shapes(_tiny(depth=1))["params"]
  assert set(params) == {"embed", "pos_embed", "block0", "ln_f"}
  assert params["pos_embed"].shape == (8, 16)
  assert set(params["block0"]) == {"ln_attn", "attn", "ln_mlp", "mlp_in", "mlp_out"}
  assert set(params["block0"]["attn"]) == {"qkv", "out"}
  assert params["block0"]["attn"]["qkv"]["kernel"].shape == (16, 48)
  assert params["block0"]["mlp_in"]["kernel"].shape == (16, 32)


def test_tied_has_no_logits_layer_and_untied_has():
  tied, untied = _shapes(_tiny())["params"], _shapes(_tiny(tied=False))["params"]
  assert "logits" not in tied
  assert untied["logits"]["kernel"].shape == (16, 256)


@pytest.mark.parametrize("t", [0, 3, 7])
def test_causal(t):
  model = _tiny()
  variables = _init(model)
  x = _tokens(2, 8)
  changed = x.copy()
  changed[:, t] = (changed[:, t] + 1) % 256
  a, b = _apply(model, variables, x), _apply(model, variables, changed)
  np.testing.assert_array_equal(np.asarray(a[:, :t]), np.asarray(b[:, :t]))
  differs = np.abs(np.asarray(a[:, t:] - b[:, t:])).max(axis=-1)  # [batch, L - t]
  assert (differs > 0).all()  # every later position sees the change


def test_any_integer_valued_input_dtype():
  model = _tiny()
  variables = _init(model)
  x = _tokens(2, 8)
  want = np.asarray(_apply(model, variables, x))
  for dtype in (np.uint8, np.float32, np.int64):
    np.testing.assert_array_equal(np.asarray(_apply(model, variables, x.astype(dtype))), want)
  zeros = np.zeros((2, 8), np.int32)
  np.testing.assert_array_equal(np.asarray(_apply(model, variables, zeros.astype(np.float32))),
                                np.asarray(_apply(model, variables, zeros)))


def _loss_grad(model: Transformer, params, x, y):
  def loss(p):
    logits = model.apply({"params": p}, x, train=True,
                         rngs={"dropout": jax.random.PRNGKey(3)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.slow
def test_remat_gives_the_same_gradient():
  """With dropout on: the recomputed blocks draw the same masks."""
  plain, remat = _tiny(depth=1, dropout=0.1), _tiny(depth=1, dropout=0.1, remat=True)
  params = _init(plain)["params"]
  assert jax.tree.structure(params) == jax.tree.structure(_shapes(remat)["params"])
  x, y = _tokens(2, 8, seed=1), _tokens(2, 8, seed=2)
  (la, ga), (lb, gb) = _loss_grad(plain, params, x, y), _loss_grad(remat, params, x, y)
  np.testing.assert_allclose(la, lb, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_dropout_is_random_in_training_and_off_in_eval():
  model = _tiny(dropout=0.5)
  variables = _init(model)
  x = _tokens(2, 8)
  np.testing.assert_array_equal(np.asarray(_apply(model, variables, x)),
                                np.asarray(_apply(_tiny(), variables, x)))  # no dropout
  a = _apply(model, variables, x, train=True, rng=jax.random.PRNGKey(1))
  b = _apply(model, variables, x, train=True, rng=jax.random.PRNGKey(2))
  assert not np.allclose(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------- by hand, in numpy


def _np_ln(x, p, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _np_dense(x, p):
  return x @ p["kernel"] + p["bias"]


def _np_gelu(x):  # the tanh approximation, flax's nn.gelu default
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _np_attention(x, p, heads):
  batch, length, width = x.shape
  hd = width // heads
  qkv = _np_dense(x, p["qkv"]).reshape(batch, length, 3, heads, hd)
  out = np.zeros((batch, length, heads, hd))
  for b in range(batch):
    for h in range(heads):
      q, k, v = qkv[b, :, 0, h], qkv[b, :, 1, h], qkv[b, :, 2, h]
      for t in range(length):
        s = k[:t + 1] @ q[t] / np.sqrt(hd)  # only positions <= t
        w = np.exp(s - s.max())
        out[b, t, h] = (w / w.sum()) @ v[:t + 1]
  return _np_dense(out.reshape(batch, length, width), p["out"])


def _np_forward(params, x, depth, heads, tied):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  h = p["embed"]["embedding"][x] + p["pos_embed"][:x.shape[1]]
  for i in range(depth):
    b = p[f"block{i}"]
    h = h + _np_attention(_np_ln(h, b["ln_attn"]), b["attn"], heads)
    h = h + _np_dense(_np_gelu(_np_dense(_np_ln(h, b["ln_mlp"]), b["mlp_in"])), b["mlp_out"])
  h = _np_ln(h, p["ln_f"])
  return h @ p["embed"]["embedding"].T if tied else _np_dense(h, p["logits"])


@pytest.mark.parametrize("depth,tied", [(0, True), (0, False), (1, True), (2, False)])
def test_logits_equal_a_numpy_computation(depth, tied):
  model = _tiny(depth=depth, tied=tied)
  params = _init(model, seed=depth)["params"]
  x = _tokens(2, 6)
  got = np.asarray(_apply(model, {"params": params}, x))
  np.testing.assert_allclose(got, _np_forward(params, x, depth, model.heads, tied),
                             rtol=1e-4, atol=1e-4)


def test_first_loss_is_near_uniform():
  """The N(0, 0.02) initialization at the default width: the tied logits start small
  (ln_f's output has unit scale), so predictions start near uniform over the 256 bytes."""
  model = Transformer(depth=0)
  x, y = _tokens(2, 128, seed=3), _tokens(2, 128, seed=4)
  logits = _apply(model, jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 128))), x)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  assert abs(float(loss) - np.log(256)) < 0.2
