"""Schedules (closed forms, optax agreement, traced hyperparameters), scaling rules, directions."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgdlab import config as config_lib
from sgdlab import optim
from sgdlab.errors import ConfigError

RTOL = 1e-6


def _cfg(**kw):
  cfg = optim.schedule_config()
  cfg.update(kw)
  return cfg


def _close(actual, expected, rtol=RTOL, atol=0.0):
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol, atol=atol)


# ------------------------------------------------------------------ inverse_time


@pytest.mark.parametrize("t,expected", [(0, 1.0), (1, 1 / 1.001), (1000, 0.5)])
def test_inverse_time_matches_keras_closed_form(t, expected):
  s = optim.inverse_time(1.0, 1e-3)
  _close(s(t), expected)
  _close(s(jnp.int32(t)), expected)
  assert s(jnp.int32(t)).dtype == jnp.float32


def test_inverse_time_zero_decay_is_constant():
  s = optim.inverse_time(0.05, 0.0)
  _close(s(jnp.arange(0, 10_000, 997)), np.full(11, 0.05))


# ------------------------------------------------------------------ build


STEPS = [0, 1, 7, 99, 100, 101, 250, 999, 1000, 5000]


def _closed_form(cfg, lr, decay, total_steps, t):
  w = cfg.warmup_steps
  if t < w:
    return lr * (cfg.warmup_init + (1 - cfg.warmup_init) * t / w)
  t -= w
  if cfg.name == "constant":
    return lr
  if cfg.name == "inverse_time":
    return lr / (1 + decay * t)
  if cfg.name == "exponential":
    p = t / cfg.transition_steps
    return lr * cfg.decay_rate ** (math.floor(p) if cfg.staircase else p)
  if cfg.name == "cosine":
    big_t = cfg.decay_steps or total_steps - w
    c = 0.5 * (1 + math.cos(math.pi * min(t, big_t) / big_t))
    return lr * ((1 - cfg.alpha) * c + cfg.alpha)
  if cfg.name == "polynomial":
    big_t = cfg.decay_steps or total_steps - w
    return lr * (cfg.alpha + (1 - cfg.alpha) * (1 - min(t, big_t) / big_t) ** cfg.power)
  return lr * cfg.factor ** sum(t >= b for b in cfg.boundaries)


CASES = {
    "constant": _cfg(name="constant"),
    "inverse_time": _cfg(name="inverse_time"),
    "exponential": _cfg(name="exponential", decay_rate=0.5,
                        transition_steps=100),
    "exponential_staircase": _cfg(name="exponential", decay_rate=0.5,
                                  transition_steps=100, staircase=True),
    "cosine": _cfg(name="cosine", alpha=0.1),
    "cosine_decay_steps": _cfg(name="cosine", decay_steps=250),
    "step": _cfg(name="step", boundaries=(100, 250), factor=0.1),
    "polynomial": _cfg(name="polynomial", alpha=1e-3),
    "polynomial_power1_decay_steps": _cfg(name="polynomial", power=1.0, decay_steps=250),
    "warmup_polynomial": _cfg(name="polynomial", warmup_steps=100, alpha=1e-3),
    "warmup_cosine": _cfg(name="cosine", warmup_steps=100, warmup_init=0.1),
    "warmup_inverse_time": _cfg(name="inverse_time", warmup_steps=100),
    "warmup_step": _cfg(name="step", warmup_steps=100, boundaries=(150,)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_build_matches_closed_form(case):
  cfg, lr, decay, total = CASES[case], 0.3, 1e-2, 1000
  s = optim.build_schedule(cfg, lr, decay, total)
  expected = [_closed_form(cfg, lr, decay, total, t) for t in STEPS]
  # optax's cosine is 1 + cos(.), which cancels near the end of the decay: there the
  # error is relative to the peak rate, not to the (tiny) value.
  atol = 1e-6 * lr if cfg.name in ("cosine", "polynomial") or cfg.warmup_steps else 0.0
  _close([s(t) for t in STEPS], expected, rtol=RTOL, atol=atol)
  _close(s(jnp.asarray(STEPS, jnp.int32)), expected, rtol=RTOL, atol=atol)
  assert s(jnp.int32(3)).dtype == jnp.float32


def test_build_agrees_with_optax_schedules():
  t = jnp.arange(0, 1200, 7)
  pairs = [
      (_cfg(name="cosine", alpha=0.2), optax.cosine_decay_schedule(0.3, 1000, 0.2)),
      (_cfg(name="exponential", decay_rate=0.9, transition_steps=50,
            staircase=True),
       optax.exponential_decay(0.3, 50, 0.9, staircase=True)),
      (_cfg(name="step", boundaries=(100, 500)),
       optax.piecewise_constant_schedule(0.3, {100: 0.1, 500: 0.1})),
      (_cfg(name="polynomial", alpha=0.01, power=2.0),
       optax.polynomial_schedule(0.3, 0.003, 2.0, 1000)),
  ]
  for cfg, reference in pairs:
    _close(optim.build_schedule(cfg, 0.3, 0.0, 1000)(t), reference(t), rtol=1e-5)


def test_cosine_endpoints():
  s = optim.build_schedule(_cfg(name="cosine", alpha=0.1), 2.0, 0.0, 400)
  _close(s(0), 2.0)
  _close(s(200), 2.0 * (0.1 + 0.9 * 0.5))
  _close(s(400), 0.2)
  _close(s(10_000), 0.2)  # Constant after decay_steps.


def test_step_boundaries():
  s = optim.build_schedule(_cfg(name="step", boundaries=(10, 20), factor=0.5),
                      1.0, 0.0, 100)
  _close([s(t) for t in (0, 9, 10, 19, 20, 99)],
         [1.0, 1.0, 0.5, 0.5, 0.25, 0.25])


def test_step_boundaries_beyond_float32_integers():
  b = 2**24 + 1  # float32(b) == 2**24, so counts must be compared as integers.
  s = optim.build_schedule(_cfg(name="step", boundaries=(b,)), 1.0, 0.0, 2**25)
  _close([s(jnp.int32(b - 1)), s(jnp.int32(b))], [1.0, 0.1])


@pytest.mark.parametrize("name", ["constant", "inverse_time", "exponential",
                                  "cosine", "polynomial", "step"])
def test_warmup_ramps_linearly_then_hands_over(name):
  w, lr = 50, 0.8
  cfg = _cfg(name=name, warmup_steps=w, boundaries=(1,))
  plain = optim.build_schedule(_cfg(name=name, boundaries=(1,)), lr, 1e-2, 1000 - w)
  warm = optim.build_schedule(cfg, lr, 1e-2, 1000)
  ramp = np.asarray(warm(jnp.arange(w + 1)))
  _close(ramp[1:w], lr * np.arange(1, w) / w, rtol=5e-6)  # optax's float32 ramp
  assert ramp[0] == 0.0
  np.testing.assert_allclose(np.diff(ramp), lr / w, rtol=1e-4)
  for t in (0, 1, 2, 100, 900):  # warm(w + t) == plain(t), warm(w) == lr.
    _close(warm(w + t), plain(t))
  _close(warm(w), lr)


def test_build_under_jit_with_traced_hyperparameters():
  cfg = _cfg(name="inverse_time", warmup_steps=10)

  @jax.jit
  def lr_at(lr, decay, count):
    return optim.build_schedule(cfg, lr, decay, 1000)(count)

  _close(lr_at(0.5, 1e-3, jnp.int32(5)), 0.25)
  _close(lr_at(0.5, 1e-3, jnp.int32(1010)), 0.25)
  _close(lr_at(jnp.float32(0.1), jnp.float32(0.0), 500), 0.1)


@pytest.mark.parametrize("case", ["inverse_time", "cosine", "warmup_step"])
def test_build_under_vmap_over_learning_rates(case):
  cfg, total = CASES[case], 1000
  lrs = jnp.asarray([0.01, 0.1, 0.5, 2.0])
  decays = jnp.asarray([0.0, 1e-3, 1e-2, 1e-1])
  count = jnp.int32(300)
  fn = jax.jit(jax.vmap(
      lambda lr, d: optim.build_schedule(cfg, lr, d, total)(count)))
  expected = [_closed_form(cfg, float(lr), float(d), total, 300)
              for lr, d in zip(lrs, decays)]
  _close(fn(lrs, decays), expected)


# ------------------------------------------------------------------ scaling


def test_scaled_learning_rate():
  f = optim.scaled_learning_rate
  for rule in optim.SCALING_RULES:
    assert f(0.1, 128, rule, 128) == 0.1
  assert f(0.1, 1024, "none", 128) == 0.1
  _close(f(0.1, 1024, "linear", 128), 0.8)
  _close(f(0.1, 32, "linear", 128), 0.025)
  _close(f(0.1, 512, "sqrt", 128), 0.2)
  _close(f(0.1, 64, "sqrt", 256), 0.05)


@pytest.mark.parametrize("field,value", [
    ("lr_scaling", "cubic"),
    ("batch_size", 0),
    ("base_batch_size", 0),
])
def test_scaling_fields_are_checked_when_the_config_is_resolved(field, value):
  c = config_lib.default_config()
  c.lr_scaling = "linear"
  c[field] = value
  with pytest.raises(ConfigError, match=f"config.{field}="):
    config_lib.resolve(c, n_devices=1)


# ------------------------------------------------------------------ optimizers


def _run(tx_updates, n=5):
  """Params, and the per-step updates of `tx_updates` on a quadratic-ish loss."""
  params = _params()
  loss = lambda p: jnp.sum(jnp.sin(p["w"]) ** 2) + jnp.sum(p["b"] ** 4)
  init, update = tx_updates
  state = init(params)
  out = []
  for _ in range(n):
    updates, state = update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
    out.append(updates)
  return out


def _params():
  return {"w": jnp.asarray([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.asarray([0.1, -0.3])}


def _ours(name, lrs=None, **fields):
  """(init, update) of sgdlab's optimizer, lr_t = lrs[t] (constant 0.05 by default)."""
  cfg = optim.optimizer_config()
  cfg.update(name=name, **fields)
  tx, t = optim.optimizer(cfg), [0]

  def update(g, state, params):
    lr = 0.05 if lrs is None else lrs[t[0]]
    t[0] += 1
    return tx.update(g, state, params, lr=jnp.float32(lr))

  return tx.init, update


MATRICES = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731


@pytest.mark.parametrize("name,fields,reference", [
    ("sgd", {}, lambda lr: optax.sgd(lr)),
    ("momentum", dict(momentum=0.8), lambda lr: optax.sgd(lr, momentum=0.8)),
    ("nesterov", dict(momentum=0.8), lambda lr: optax.sgd(lr, momentum=0.8, nesterov=True)),
    ("adam", dict(b1=0.8, b2=0.99, eps=1e-7), lambda lr: optax.adam(lr, b1=0.8, b2=0.99,
                                                                     eps=1e-7)),
    ("adamw", dict(b1=0.8, weight_decay=0.1),
     lambda lr: optax.adamw(lr, b1=0.8, weight_decay=0.1, mask=MATRICES)),
    ("adamw", dict(weight_decay=0.1, decay_params="all"),
     lambda lr: optax.adamw(lr, weight_decay=0.1)),
    ("lamb", dict(eps=1e-6, weight_decay=0.01, decay_params="all"),
     lambda lr: optax.lamb(lr, eps=1e-6, weight_decay=0.01)),
    ("lars", dict(weight_decay=0.01, trust_coefficient=0.002, momentum=0.8),
     lambda lr: optax.lars(lr, weight_decay=0.01, weight_decay_mask=MATRICES,
                           trust_coefficient=0.002, trust_ratio_mask=MATRICES, momentum=0.8)),
    ("momentum", dict(clip_norm=0.5), lambda lr: optax.chain(
        optax.clip_by_global_norm(0.5), optax.sgd(lr, momentum=0.9))),
])
def test_each_optimizer_equals_its_optax_alias(name, fields, reference):
  ours = _run(_ours(name, **fields))
  ref = reference(0.05)
  for a, b in zip(ours, _run((ref.init, ref.update))):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=RTOL), a, b)


def test_lamb_excludes_one_dimensional_parameters_from_decay_and_trust_ratio():
  """With decay_params="auto" a bias gets Adam's own update; a matrix the trust ratio."""
  ours = _run(_ours("lamb", weight_decay=0.01), n=1)[0]
  adam = optax.adam(0.05)
  plain = _run((adam.init, adam.update), n=1)[0]
  np.testing.assert_allclose(ours["b"], plain["b"], rtol=RTOL)
  w = _params()["w"]
  direction = plain["w"] / -0.05 + 0.01 * w
  expected = -0.05 * jnp.linalg.norm(w) / jnp.linalg.norm(direction) * direction
  np.testing.assert_allclose(ours["w"], expected, rtol=1e-5)


def test_lars_under_a_schedule_scales_by_the_lr_before_its_momentum_trace():
  """Algorithm 1 of You et al. (2017): v_t = mu v_{t-1} + lr_t * trust * g; lr applied
  after the trace instead would give lr_t * (mu v_{t-1} + trust * g)."""
  lrs = [0.1, 0.05, 0.025]
  ours = _run(_ours("lars", lrs=lrs, decay_params="all"), n=3)
  paper = optax.lars(optax.piecewise_constant_schedule(0.1, {1: 0.5, 2: 0.5}))
  theirs = _run((paper.init, paper.update), n=3)
  for a, b in zip(ours, theirs):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=RTOL), a, b)
  late = optax.chain(optax.scale_by_trust_ratio(trust_coefficient=0.001), optax.trace(0.9))
  state, params, g = late.init(_params()), _params(), None
  loss = lambda p: jnp.sum(jnp.sin(p["w"]) ** 2) + jnp.sum(p["b"] ** 4)
  for lr in lrs:
    d, state = late.update(jax.grad(loss)(params), state, params)
    g = optim.apply_lr(d, lr)
    params = optax.apply_updates(params, g)
  assert not np.allclose(g["w"], ours[-1]["w"], rtol=1e-3)


def test_apply_lr_preserves_dtypes():
  tree = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(2, jnp.float32)}
  out = optim.apply_lr(tree, jnp.float32(0.5))
  assert out["a"].dtype == jnp.bfloat16 and out["b"].dtype == jnp.float32
  _close(out["b"], [-0.5, -0.5])


# ------------------------------------------------------------------ validate


def test_defaults_validate():
  optim.validate_schedule(optim.schedule_config())
  optim.validate_optimizer(optim.optimizer_config())


@pytest.mark.parametrize("field,value", [
    ("name", "linear_warmup"),
    ("warmup_steps", -1),
    ("warmup_init", 1.5),
    ("warmup_epochs", -0.5),
    ("warmup_from", "scaled"),
    ("power", 0.0),
    ("decay_rate", 0.0),
    ("decay_rate", -0.5),
    ("transition_steps", 0),
    ("decay_steps", -5),
    ("alpha", -0.1),
    ("alpha", 1.1),
    ("boundaries", (100, 100)),
    ("boundaries", (200, 100)),
    ("boundaries", (0, 100)),
    ("factor", 0.0),
])
def test_schedule_validate_rejects(field, value):
  cfg = _cfg(**{field: value})
  with pytest.raises(ConfigError, match=f"config.schedule.{field}="):
    optim.validate_schedule(cfg)


def test_schedule_name_error_lists_valid_names():
  with pytest.raises(ConfigError) as e:
    optim.validate_schedule(_cfg(name="bogus"))
  assert all(name in str(e.value) for name in optim.SCHEDULES)


def test_cosine_without_steps_to_decay_is_rejected():
  cfg = _cfg(name="cosine", warmup_steps=100)
  with pytest.raises(ConfigError, match="config.schedule.decay_steps="):
    optim.validate_schedule(cfg, total_steps=100)


@pytest.mark.parametrize("field,value", [
    ("name", "rmsprop"),
    ("momentum", 1.0),
    ("momentum", -0.1),
    ("b1", 1.0),
    ("b2", -0.01),
    ("eps", 0.0),
])
def test_optimizer_validate_rejects(field, value):
  cfg = optim.optimizer_config()
  cfg[field] = value
  with pytest.raises(ConfigError, match=f"config.optimizer.{field}=") as e:
    optim.validate_optimizer(cfg)
  if field == "name":
    assert all(name in str(e.value) for name in optim.OPTIMIZERS)


@pytest.mark.parametrize("name,field,value,what", [
    ("momentum", "b2", 0.99, "momentum has no b2"),
    ("adam", "momentum", 0.5, "adam has no momentum"),
    ("sgd", "trust_coefficient", 0.01, "sgd has no trust_coefficient"),
    ("lamb", "b2", 1.0, "a number in [0, 1)"),
    ("adamw", "eps", 0.0, "a number > 0"),
    ("lars", "trust_coefficient", -0.001, "a number >= 0"),
    ("momentum", "clip_norm", -1.0, "a number >= 0"),
    ("lars", "decay_params", "biases", "one of auto, all, matrices"),
])
def test_a_field_the_optimizer_lacks_or_out_of_range_is_one_error(name, field, value, what):
  cfg = optim.optimizer_config()
  cfg.update(name=name, **{field: value})
  with pytest.raises(ConfigError, match=f"config.optimizer.{field}=") as e:
    optim.validate_optimizer(cfg)
  assert what in str(e.value)
