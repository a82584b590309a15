"""The byte-level text corpus: the split by position, windows that are the file's bytes
shifted by one, what an epoch's circular windows cover, offsets, and every ConfigError."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sgdlab.data import text
from sgdlab.errors import ConfigError

SAMPLE = "héllo wörld, ünïcode ok. " * 12  # 2 bytes per accented letter


def _write(tmp_path, content: str | bytes, name: str = "corpus.txt") -> str:
  path = os.path.join(tmp_path, name)
  with open(path, "wb") as f:
    f.write(content.encode("utf-8") if isinstance(content, str) else content)
  return path


def _cfg(path, seq_len=8, test_fraction=0.2, **extra) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(name="text", path=str(path), seq_len=seq_len,
                                        test_fraction=test_fraction, **extra))


# ------------------------------------------------------------------------- reading


def test_multibyte_utf8_gives_one_token_per_byte(tmp_path):
  raw = SAMPLE.encode("utf-8")
  assert len(raw) > len(SAMPLE)  # the accents really are two bytes
  cfg = _cfg(_write(tmp_path, SAMPLE))
  n_train, n_test = text.check(cfg)
  assert n_train + n_test == len(raw)
  train, test = text.read_tokens(cfg)
  assert train.dtype == np.uint8 and test.dtype == np.uint8
  np.testing.assert_array_equal(np.concatenate([train, test]), np.frombuffer(raw, np.uint8))


@pytest.mark.parametrize("fraction", [0.2, 0.1, 0.5, 0.37])
def test_split_by_position(tmp_path, fraction):
  raw = bytes(range(32, 127)) * 3  # 285 bytes
  cfg = _cfg(_write(tmp_path, raw), test_fraction=fraction)
  n_train, n_test = text.check(cfg)
  assert n_train == round(len(raw) * (1 - fraction)) and n_train + n_test == len(raw)
  train, test = text.read_tokens(cfg)
  assert train.tobytes() == raw[:n_train] and test.tobytes() == raw[n_train:]
  assert (len(train), len(test)) == (n_train, n_test)


def test_path_with_user_folder(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path))
  _write(tmp_path, SAMPLE)
  assert sum(text.check(_cfg("~/corpus.txt"))) == len(SAMPLE.encode())


# ------------------------------------------------------------------------- windows


def test_windows_are_the_bytes_shifted_by_one(tmp_path):
  raw = SAMPLE.encode("utf-8")
  train, _ = text.read_tokens(_cfg(_write(tmp_path, SAMPLE)))
  seq_len, n = 8, len(train)
  starts = jnp.array([[0, 3], [n - 8 - 1, n - 3]])  # the last one wraps
  x, y = text.windows(train, starts, seq_len)
  assert x.shape == y.shape == (2, 2, seq_len) and x.dtype == y.dtype == jnp.int32
  x, y = np.asarray(x), np.asarray(y)
  np.testing.assert_array_equal(x[..., 1:], y[..., :-1])
  assert bytes(x[0, 1].astype(np.uint8)) == raw[3:11]
  assert bytes(y[0, 1].astype(np.uint8)) == raw[4:12]
  assert bytes(y[1, 0].astype(np.uint8)) == raw[n - 8:n]  # the last target: train's end
  circular = raw[:n] + raw[:n]
  assert bytes(x[1, 1].astype(np.uint8)) == circular[n - 3:n + 5]
  assert bytes(y[1, 1].astype(np.uint8)) == circular[n - 2:n + 6]


def test_windows_work_inside_jit():
  tokens = jnp.arange(50, dtype=jnp.uint8)
  fn = jax.jit(lambda t, s: text.windows(t, s, 4))
  x, y = fn(tokens, jnp.array([0, 48]))
  np.testing.assert_array_equal(np.asarray(x), [[0, 1, 2, 3], [48, 49, 0, 1]])
  np.testing.assert_array_equal(np.asarray(y), [[1, 2, 3, 4], [49, 0, 1, 2]])


@pytest.mark.parametrize("n,seq_len,offset", [(100, 8, 0), (100, 8, 5), (96, 8, 7),
                                              (37, 5, 4)])
def test_an_epoch_covers_each_position_at_most_once(n, seq_len, offset):
  """W = floor(n / L) windows from offset o: the inputs are positions o .. o + W*L - 1
  and the targets o + 1 .. o + W*L (mod n), each exactly once; the n - W*L positions
  the epoch leaves out (< L) follow them."""
  tokens = jnp.arange(n, dtype=jnp.int32)  # each token is its own position
  w = text.n_windows_train(n, seq_len)
  assert w == n // seq_len
  starts = text.window_starts(jnp.arange(w), offset, seq_len, n)
  assert starts.shape == (w,) and starts.dtype == jnp.int32
  x, y = (np.asarray(a) for a in text.windows(tokens, starts, seq_len))
  for got, first in ((x, offset), (y, offset + 1)):
    counts = np.bincount(got.reshape(-1), minlength=n)
    want = np.zeros(n, int)
    want[(first + np.arange(w * seq_len)) % n] = 1
    np.testing.assert_array_equal(counts, want)
  assert n - w * seq_len < seq_len
  if n % seq_len == 0:  # a whole number of windows: every target every epoch
    assert set(y.reshape(-1)) == set(range(n))


def test_the_same_windows_in_any_order():
  """The batch order permutes window indices; the set of windows does not change."""
  n, seq_len, offset = 90, 7, 3
  tokens = jnp.arange(n, dtype=jnp.int32)
  w = text.n_windows_train(n, seq_len)
  order = jax.random.permutation(jax.random.PRNGKey(0), w)
  a = np.asarray(text.windows(tokens, text.window_starts(jnp.arange(w), offset, seq_len, n),
                              seq_len)[0])
  b = np.asarray(text.windows(tokens, text.window_starts(order, offset, seq_len, n),
                              seq_len)[0])
  np.testing.assert_array_equal(a[np.asarray(order)], b)


def test_test_windows_never_wrap():
  for n, seq_len in ((100, 8), (97, 8), (9, 8), (17, 8), (16, 8)):
    w = text.n_windows_test(n, seq_len)
    assert w == (n - 1) // seq_len
    starts = text.window_starts(jnp.arange(w), 0, seq_len, n)
    x, y = (np.asarray(a) for a in text.windows(jnp.arange(n), starts, seq_len))
    assert w == 0 or y.max() <= n - 1 and (np.diff(y.reshape(-1)) == 1).all()
  assert text.n_windows_test(8, 8) == 0


def test_epoch_offsets():
  key = jax.random.PRNGKey(42)
  offsets = [int(text.epoch_offset(key, e, 64)) for e in range(20)]
  assert all(0 <= o < 64 for o in offsets)
  assert len(set(offsets)) > 5  # they move from epoch to epoch
  assert offsets == [int(text.epoch_offset(key, e, 64)) for e in range(20)]  # (key, epoch)
  other = [int(text.epoch_offset(jax.random.PRNGKey(43), e, 64)) for e in range(20)]
  assert other != offsets
  jitted = jax.jit(text.epoch_offset, static_argnums=2)
  assert int(jitted(key, jnp.int32(3), 64)) == offsets[3]
  assert text.epoch_offset(key, 0, 64).dtype == jnp.int32
  assert int(text.epoch_offset(key, 5, 1)) == 0


def test_window_starts_keep_the_index_shape():
  idx = jnp.arange(6).reshape(2, 3)
  starts = text.window_starts(idx, 2, 10, 45)
  assert starts.shape == (2, 3) and starts.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(starts), [[2, 12, 22], [32, 42, 7]])


# -------------------------------------------------------------------------- errors


def _raises(cfg, field: str) -> ConfigError:
  with pytest.raises(ConfigError) as e:
    text.check(cfg)
  assert e.value.field == field
  assert str(e.value).startswith(f"config.{field}=")
  with pytest.raises(ConfigError):
    text.read_tokens(cfg)
  return e.value


def test_missing_empty_and_unset_paths(tmp_path):
  _raises(_cfg(os.path.join(tmp_path, "nope.txt")), "data.path")
  _raises(_cfg(tmp_path), "data.path")  # a folder
  _raises(_cfg(""), "data.path")
  assert "0 bytes" in str(_raises(_cfg(_write(tmp_path, b"")), "data.path"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
  path = _write(tmp_path, SAMPLE)
  os.chmod(path, 0)
  try:
    _raises(_cfg(path), "data.path")
  finally:
    os.chmod(path, 0o644)


@pytest.mark.parametrize("raw", [b"\xff" + b"a" * 100, b"a" * 100 + b"\xc3",
                                 "ok".encode() * 50 + b"\xe9t\xe9"])  # latin-1
def test_non_utf8_is_rejected(tmp_path, raw):
  error = _raises(_cfg(_write(tmp_path, raw)), "data.path")
  assert "UTF-8" in str(error) and "byte" in str(error)


@pytest.mark.parametrize("seq_len", [0, -3, 8.0, "8", True, None])
def test_seq_len_must_be_a_positive_int(tmp_path, seq_len):
  _raises(_cfg(_write(tmp_path, SAMPLE), seq_len=seq_len), "data.seq_len")


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, "0.2"])
def test_test_fraction_in_the_open_interval(tmp_path, fraction):
  _raises(_cfg(_write(tmp_path, SAMPLE), test_fraction=fraction), "data.test_fraction")


def test_a_split_shorter_than_one_window(tmp_path):
  path = _write(tmp_path, b"abcdefghij" * 10)  # 100 tokens: 80 train, 20 test
  assert text.check(_cfg(path, seq_len=19)) == (80, 20)  # 20 test tokens: one window
  error = _raises(_cfg(path, seq_len=20), "data.seq_len")
  message = str(error)
  for fact in ("100 tokens", "80 train", "20 test", "at most 19"):
    assert fact in message, (fact, message)
  # The train split the short one: 40 train, 60 test.
  assert "at most 39" in str(_raises(_cfg(path, seq_len=40, test_fraction=0.6),
                                     "data.seq_len"))


def test_a_file_too_short_for_any_seq_len(tmp_path):
  error = _raises(_cfg(_write(tmp_path, b"abcd"), seq_len=1), "data.seq_len")
  assert "4 tokens" in str(error) and "impossible" in str(error)
