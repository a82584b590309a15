"""The language model through sgdlab's one step and loop: loss per token, windows cut on
device, perplexity and bits per byte, data parallelism, and the bad inputs."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest
from sgdlab import config as config_lib
from sgdlab.errors import ConfigError
from sgdlab import trainer
from sgdlab.train import run as run_lib, step

TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness; héllo wörld. ") * 6


def lm_config(path, **overrides):
  c = config_lib.default_config()
  c.data.name, c.data.path, c.data.seq_len = "text", str(path), 8
  c.model.name, c.model.transformer_width, c.model.transformer_depth, c.model.heads = (
      "transformer", 16, 1, 2)
  c.batch_size, c.num_epochs, c.learning_rate = 8, 2, 0.1
  for key, value in overrides.items():
    config_lib.set_field(c, key, value)
  return c


@pytest.fixture
def corpus(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text(TEXT, encoding="utf-8")
  return path


def _hand_loss(model, params, tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> float:
  """Mean next-token cross-entropy over every token of the windows, in numpy."""
  pos = (starts[:, None] + np.arange(seq_len + 1)) % len(tokens)
  windows = tokens[pos].astype(np.int32)
  logits = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(windows[:, :-1])),
                      np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  targets = windows[:, 1:]
  return float(-np.take_along_axis(logp, targets[..., None], -1).mean())


@pytest.mark.slow
def test_the_step_loss_is_the_mean_per_token_cross_entropy(corpus, mesh1):
  """Also the noise-scale norms: one device splits the batch in two, |G_small|^2 is the
  mean of each half's squared mean-per-token gradient norm, |G_big|^2 the whole
  batch's, and a full batch counts as full."""
  run = run_lib.create_run(config_lib.resolve(lm_config(corpus, noise_scale=True),
                                              n_devices=1), mesh=mesh1)
  state = run.init_state()
  feed = run.feed(0, 0, 1)
  _, metrics = run.advance(state, feed)
  starts = np.asarray(feed["idx"][0])
  tokens = run.dataset.x_train
  want = _hand_loss(run.program.model, jax.device_get(state.params), tokens, starts, 8)
  np.testing.assert_allclose(float(metrics["loss"][0]), want, rtol=1e-5)
  pos = (starts[:, None] + np.arange(9)) % len(tokens)
  windows = jnp.asarray(tokens[pos].astype(np.int32))

  def loss(p, w):
    logits = run.program.model.apply({"params": p}, w[:, :-1])
    return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), w[:, 1:, None], -1))

  grad = jax.jit(jax.grad(loss))  # compiled: op-by-op, a transformer's gradient is slow

  def sq_norm_of_mean_grad(w):
    return sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grad(state.params, w)))

  assert float(metrics["full"][0]) == 1.0
  assert float(metrics["b_small"][0]) == 4 and float(metrics["b_big"][0]) == 8
  np.testing.assert_allclose(float(metrics["g_small_sq"][0]), np.mean(
      [sq_norm_of_mean_grad(windows[:4]), sq_norm_of_mean_grad(windows[4:])]), rtol=1e-4)
  np.testing.assert_allclose(float(metrics["g_big_sq"][0]), sq_norm_of_mean_grad(windows),
                             rtol=1e-4)
  # The evaluation: every non-overlapping window of the test tokens, from position 0.
  test = run.dataset.x_test
  n = (len(test) - 1) // 8
  got = run.evaluate(step.eval_variables(state))
  np.testing.assert_allclose(float(got["loss"]), _hand_loss(
      run.program.model, jax.device_get(state.params), test, np.arange(n) * 8, 8), rtol=1e-5)


def test_an_epoch_is_every_window_from_one_offset_and_the_offset_moves(corpus, mesh1):
  run = run_lib.create_run(config_lib.resolve(lm_config(corpus), n_devices=1), mesh=mesh1,
                           compile_now=False)
  n_tokens, seq_len = len(run.dataset.x_train), 8
  offsets = set()
  for epoch in range(6):
    order = jax.device_get(run.order(epoch))
    starts = order["idx"][order["mask"] > 0]
    assert len(starts) == n_tokens // seq_len == run.program.first.spec.n_train
    offset = int(starts.min() % seq_len)
    assert sorted(starts.tolist()) == sorted(((offset + np.arange(len(starts)) * seq_len)
                                              % n_tokens).tolist())
    offsets.add(offset)
  assert len(offsets) > 1


def test_history_reports_perplexity_and_bits_per_byte(corpus, mesh1):
  h = trainer.train(lm_config(corpus, **{"data.validation_fraction": 0.2}), mesh=mesh1)
  e = h.epochs
  assert len(e["test_loss"]) == 2
  for split in ("test", "validation"):
    np.testing.assert_allclose(e[f"{split}_perplexity"], np.exp(e[f"{split}_loss"]))
    np.testing.assert_allclose(e[f"{split}_bits_per_byte"],
                               np.asarray(e[f"{split}_loss"]) / math.log(2))
  assert e["test_loss"][-1] < math.log(256)  # it learned something about the bytes


@pytest.mark.slow
def test_eight_devices_train_as_one(corpus, mesh1, mesh8):
  c = lm_config(corpus, batch_size=16)
  one = trainer.train(c, mesh=mesh1)
  eight = trainer.train(c, mesh=mesh8)
  np.testing.assert_allclose(eight.steps["loss"], one.steps["loss"], rtol=1e-5)


def test_model_and_data_must_agree(corpus):
  with pytest.raises(ConfigError) as e:
    config_lib.resolve(lm_config(corpus, **{"model.name": "mlp"}), n_devices=1)
  assert e.value.field == "model.name"
  with pytest.raises(ConfigError) as e:
    config_lib.resolve(conftest.tiny_config(**{"model.name": "transformer"}), n_devices=1)
  assert e.value.field == "data.name"
  with pytest.raises(ConfigError) as e:
    config_lib.resolve(lm_config(corpus, **{"model.heads": 3}), n_devices=1)
  assert e.value.field == "model.heads"


def test_a_text_shorter_than_a_window_at_the_cli_is_one_line_exit_2_nothing_written(tmp_path):
  short = tmp_path / "short.txt"
  short.write_text("too short for a window of 256", encoding="utf-8")
  workdir = tmp_path / "runs"
  proc = subprocess.run(
      [sys.executable, "-m", "sgdlab.launch",
       f"--config={os.path.join(conftest.REPO, 'experiments', 'classic_batch_size.py')}:small",
       f"--workdir={workdir}", "--config.data.name=text", "--config.model.name=transformer",
       f"--config.data.path={short}", "--config.data.seq_len=256"],
      env=conftest.subprocess_env(1), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: config.data.seq_len=256 is invalid"), lines
  assert not workdir.exists()
