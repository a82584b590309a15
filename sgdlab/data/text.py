"""A byte-level text corpus: any UTF-8 file at data.path, one token per byte (256 classes).

The split is by position, so no test text appears in training: the first
1 - data.test_fraction of the bytes train (rounded to a whole byte), the rest test.

A training epoch is floor(n_train / seq_len) windows of seq_len + 1 consecutive tokens
(inputs the first seq_len, targets the same shifted by one). Window i starts at
(offset + i * seq_len) mod n_train, read circularly, with one offset in [0, seq_len) per
(seed, epoch): each epoch then has the same number of windows, its targets are
floor(n_train / seq_len) * seq_len distinct positions (each once), and which fewer than
seq_len positions it leaves out, and where windows break, moves from epoch to epoch. The
one window that wraps joins the end of the training text to its start. The order of the
windows is the batch order's permutation, as for any dataset; only the starts are here.

Test windows are fixed: non-overlapping from position 0, never wrapping, so each test
target is scored once per evaluation.
"""

from __future__ import annotations

import numbers
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sgdlab.errors import ConfigError

NAMES = ("text",)
VOCAB_SIZE = 256

# Folded into the data-order key before the epoch: the batch order's permutation uses
# fold_in(key, epoch) and CIFAR's augmentation draws fold in 2**32 - 1 first, so the
# offsets are a stream of their own.
_OFFSET_STREAM = 2**32 - 2


def _check_seq_len(cfg: ml_collections.ConfigDict) -> int:
  seq_len = cfg.get("seq_len")
  if (not isinstance(seq_len, numbers.Integral) or isinstance(seq_len, (bool, np.bool_))
      or seq_len < 1):
    raise ConfigError("data.seq_len", seq_len, "a positive whole number of tokens "
                      "(the context length)")
  return int(seq_len)


def _read_checked(cfg: ml_collections.ConfigDict) -> bytes:
  """The file's bytes, or a ConfigError on data.path: missing, unreadable, empty or not
  UTF-8."""
  path = cfg.get("path")
  if not isinstance(path, str) or not path:
    raise ConfigError("data.path", path, "the path of a UTF-8 text file")
  full = os.path.expanduser(path)
  if not os.path.isfile(full):
    raise ConfigError("data.path", path, "an existing UTF-8 text file")
  try:
    with open(full, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise ConfigError("data.path", path, f"a readable UTF-8 text file ({e.strerror})") from e
  if not raw:
    raise ConfigError("data.path", path, "a non-empty UTF-8 text file (it has 0 bytes)")
  try:
    raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ConfigError("data.path", path, f"a UTF-8 text file (byte {e.start} is "
                      f"0x{raw[e.start]:02x}: {e.reason})") from e
  return raw


def split_sizes(n_tokens: int, test_fraction: float) -> tuple[int, int]:
  """(n_train, n_test) of a file of n_tokens: the first round(n * (1 - f)) train."""
  n_train = int(round(n_tokens * (1.0 - test_fraction)))
  return n_train, n_tokens - n_train


def _check_sizes(cfg: ml_collections.ConfigDict, n_tokens: int, seq_len: int) -> tuple[int, int]:
  fraction = cfg.get("test_fraction")
  if (not isinstance(fraction, numbers.Real) or isinstance(fraction, (bool, np.bool_))
      or not 0.0 < fraction < 1.0):
    raise ConfigError("data.test_fraction", fraction, "a fraction in (0, 1): the final "
                      "part of the text that is held out")
  n_train, n_test = split_sizes(n_tokens, fraction)
  if min(n_train, n_test) < seq_len + 1:
    largest = min(n_train, n_test) - 1
    fix = (f"at most {largest}" if largest >= 1
           else "impossible: a split has under 2 tokens; use a longer file or another "
           "data.test_fraction")
    raise ConfigError("data.seq_len", seq_len,
                      f"each split must hold one window of seq_len + 1 = {seq_len + 1} "
                      f"tokens, but {cfg.path} has {n_tokens} tokens: {n_train} train, "
                      f"{n_test} test (test_fraction={fraction}); seq_len {fix}")
  return n_train, n_test


def check(cfg: ml_collections.ConfigDict) -> tuple[int, int]:
  """(n_train_tokens, n_test_tokens) of data.path, or a ConfigError: data.seq_len,
  data.path, data.test_fraction, then whether both splits hold a window."""
  seq_len = _check_seq_len(cfg)
  raw = _read_checked(cfg)
  return _check_sizes(cfg, len(raw), seq_len)


def read_tokens(cfg: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
  """(train tokens, test tokens): uint8 [n_train], [n_test], the file's bytes in order.
  Checks as `check` does (the file is read once either way)."""
  seq_len = _check_seq_len(cfg)
  raw = _read_checked(cfg)
  n_train, _ = _check_sizes(cfg, len(raw), seq_len)
  tokens = np.frombuffer(raw, dtype=np.uint8)
  return tokens[:n_train].copy(), tokens[n_train:].copy()


def n_windows_train(n_tokens: int, seq_len: int) -> int:
  """Windows in a training epoch: floor(n / seq_len) (they read circularly)."""
  return n_tokens // seq_len


def n_windows_test(n_tokens: int, seq_len: int) -> int:
  """Non-overlapping test windows from position 0 that fit without wrapping."""
  return max(0, (n_tokens - 1) // seq_len)


def epoch_offset(key: jax.Array, epoch: jax.Array | int, seq_len: int) -> jax.Array:
  """int32 in [0, seq_len): where the epoch's first window starts; a function of
  (key, epoch) alone, independent of the epoch's permutation."""
  stream = jax.random.fold_in(jax.random.fold_in(key, _OFFSET_STREAM), epoch)
  return jax.random.randint(stream, (), 0, seq_len, dtype=jnp.int32)


def window_starts(window_idx: jax.Array, offset: jax.Array | int, seq_len: int,
                  n_tokens: int) -> jax.Array:
  """int32 starts (offset + idx * seq_len) mod n_tokens, shaped as window_idx."""
  idx = jnp.asarray(window_idx, jnp.int32)
  return (jnp.asarray(offset, jnp.int32) + idx * seq_len) % n_tokens


def windows(tokens: jax.Array, starts: jax.Array, seq_len: int) -> tuple[jax.Array, jax.Array]:
  """(inputs, targets): int32 [*starts.shape, seq_len], tokens[s:s + seq_len] and
  tokens[s + 1:s + seq_len + 1], read circularly from the 1-D token array; jittable."""
  tokens = jnp.asarray(tokens)
  starts = jnp.asarray(starts, jnp.int32)
  positions = (starts[..., None] + jnp.arange(seq_len + 1, dtype=jnp.int32)) % tokens.shape[0]
  seq = jnp.take(tokens, positions, axis=0).astype(jnp.int32)
  return seq[..., :-1], seq[..., 1:]
