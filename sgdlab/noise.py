"""Gradient noise scale (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training").

B_simple = tr(Sigma) / |G|^2, with Sigma the per-example gradient covariance and G the
true gradient, predicts the critical batch size: below it doubling k halves the steps
to a target, above it returns diminish.

Three ways to get at it, from cheap to exact:
* Online, during training (their Appendix A.1), from the two batch sizes the
  data-parallel step already has: B_small (one device's shard, or half the batch on
  one device) and B_big (the global batch). Since E|G_B|^2 = |G|^2 + tr(Sigma) / B,
    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)
  are unbiased; each is averaged (EMA) on its own and B_simple is their ratio, since
  the ratio of noisy estimates is biased. `online_estimates`, `NoiseEMA`.
  With m small batches of b = B_big / m (`config.noise_groups` splits each device's
  batch), the tr(Sigma) estimate is b / (m - 1) sum_i |G_i - G_big|^2, a sample
  variance over m - 1 degrees of freedom: two halves give one, and its noise, not lag,
  was most of the in-training error early in the MLP/MNIST run (noise_checkpoints.py).
  `windowed_curve` (sgdlab.noise_window) replaces the EMA's ~20-step lag with
  exponential trends fitted over a few steps and read at the current one.
* The same estimate at FIXED parameters, averaged over many batches: the train step
  is run and its update thrown away (`sgdlab.train.fixed_params.online_at_fixed_params`). The trainer does this
  itself at each epoch's end with config.noise_probe_batches > 0 (the noise probe,
  `probe_stats` of Program.probe_fn's norms): where B_simple nears k one batch's
  |G|^2 estimate is mostly its noise tr(Sigma)/k, and no window over steps helps, since
  |G|^2 itself can jump 2-5x from one step to the next; m batches at one point can.
* Exact, from per-example gradients over a whole dataset (`exact`).

Batches drawn without replacement from n examples (an epoch's permutation) have
E|G_B|^2 = |G|^2 + tr(Sigma) (n - B) / (B (n - 1)), so the raw formulas above give
tr(Sigma) n / (n - 1) and |G|^2 - tr(Sigma) / (n - 1): the second is off by
B_simple / (n - 1) relative, which matters once B_simple nears the dataset size.
Passing n_population removes both biases.

`fit_steps` fits their model of steps to a target, S = S_min (1 + B_noise / k).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgdlab.noise_window import trend_at, windowed_curve  # pylint: disable=unused-import

# (params, x, y) for ONE example (no batch axis) -> scalar loss.
ExampleLoss = Callable[[Any, jax.Array, jax.Array], jax.Array]

_CHUNK_BYTES = 256 << 20  # per-example gradients held at once by `exact`


@dataclasses.dataclass(frozen=True)
class NoiseStats:
  """|G|^2 and tr(Sigma) at one point in parameter space, and their ratio."""

  grad_sq: float
  trace_sigma: float
  count: int  # examples (exact) or batches (online) behind the figures
  grad_sq_se: float = math.nan  # standard errors of the mean over batches (online only)
  trace_sigma_se: float = math.nan

  @property
  def b_simple(self) -> float:
    return self.trace_sigma / self.grad_sq if self.grad_sq > 0 else math.inf


# ------------------------------------------------------------------------------ online


def online_estimates(g_small_sq: np.ndarray, g_big_sq: np.ndarray, b_small: np.ndarray,
                     b_big: np.ndarray, *, n_population: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Unbiased per-step estimates (|G|^2, tr(Sigma)) from the two batch sizes.

  n_population: the dataset size when batches are drawn without replacement from it;
  None treats the data as infinite (the formulas of McCandlish et al.).
  """
  g_small_sq, g_big_sq = np.asarray(g_small_sq, np.float64), np.asarray(g_big_sq, np.float64)
  b_small, b_big = np.asarray(b_small, np.float64), np.asarray(b_big, np.float64)
  grad_sq = (b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small)
  trace = (g_small_sq - g_big_sq) / (1.0 / b_small - 1.0 / b_big)
  if n_population is not None:
    grad_sq = grad_sq + trace / n_population
    trace = trace * (n_population - 1) / n_population
  return grad_sq, trace


class NoiseEMA:
  """Bias-corrected EMAs of |G|^2 and tr(Sigma); fed per step, read per epoch.

  Pure host arithmetic over the per-step estimates stored in the history, so a resumed
  run rebuilds the same state by replaying them.
  """

  def __init__(self, decay: float):
    self.decay = decay
    self.grad_sq = 0.0
    self.trace = 0.0
    self.n = 0

  def update(self, grad_sq: np.ndarray, trace: np.ndarray) -> None:
    for g, t in zip(np.ravel(grad_sq), np.ravel(trace)):
      if not (np.isfinite(g) and np.isfinite(t)):
        continue
      self.grad_sq = self.decay * self.grad_sq + (1 - self.decay) * g
      self.trace = self.decay * self.trace + (1 - self.decay) * t
      self.n += 1

  def values(self) -> tuple[float, float, float]:
    """(|G|^2, tr(Sigma), B_simple) so far; NaN before the first full batch."""
    if self.n == 0:
      return float("nan"), float("nan"), float("nan")
    correction = 1 - self.decay ** self.n
    g, t = self.grad_sq / correction, self.trace / correction
    return g, t, (t / g if g > 0 else float("inf"))


def ema_curve(grad_sq: Sequence[float], trace: Sequence[float], decay: float) -> np.ndarray:
  """B_simple after every step, as NoiseEMA reports it (NaN until the first estimate)."""
  ema, out = NoiseEMA(decay), []
  for g, t in zip(grad_sq, trace):
    ema.update(np.asarray([g]), np.asarray([t]))
    out.append(ema.values()[2])
  return np.asarray(out)


def probe_stats(norms: dict[str, np.ndarray], *, n_population: int | None = None
                ) -> NoiseStats:
  """The mean of the per-batch estimates from the step's norms on batches at one set of
  parameters (`sgdlab.train.fixed_params`, the trainer's noise probe), with standard errors."""
  grad_sq, trace = online_estimates(norms["g_small_sq"], norms["g_big_sq"], norms["b_small"],
                                    norms["b_big"], n_population=n_population)
  se = lambda v: float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
  return NoiseStats(float(np.mean(grad_sq)), float(np.mean(trace)), len(grad_sq),
                    se(grad_sq), se(trace))


# ------------------------------------------------------------------------------- exact


def classifier_loss(model: nn.Module) -> ExampleLoss:
  """Softmax cross-entropy of one example, as the train step computes it (no dropout)."""

  def loss(params, x, y):
    logits = model.apply({"params": params}, x[None], train=False)[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)

  return loss


def exact(loss_fn: ExampleLoss, params: Any, x: np.ndarray | jax.Array,
          y: np.ndarray | jax.Array, *, chunk_size: int | None = None) -> NoiseStats:
  """|G|^2, tr(Sigma) and B_simple over the whole dataset (x, y) at `params`.

  Sigma = (1/n) sum_i (g_i - G)(g_i - G)^T is the covariance of the n per-example
  gradients g_i, so tr(Sigma) = (1/n) sum_i |g_i - G|^2. Two passes: G from ordinary
  batched gradients, then per-example gradients (vmap) in chunks of chunk_size, each
  compared with G before the next chunk is formed. Subtracting G first avoids the
  float32 cancellation of mean |g_i|^2 - |G|^2 when the noise is small. Chunk sums
  add up on the host in float64. The default chunk holds ~256 MiB of gradients.
  Compiled code is reused across calls with the same loss_fn object and shapes.
  """
  n = int(x.shape[0])
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  if chunk_size is None:
    chunk_size = max(1, min(n, _CHUNK_BYTES // (4 * max(n_params, 1))))
  chunks = -(-n // chunk_size)
  pad = chunks * chunk_size - n
  split = lambda a: np.concatenate([np.asarray(a), np.zeros((pad, *a.shape[1:]), a.dtype)]
                                   ).reshape(chunks, chunk_size, *a.shape[1:])
  xs, ys = split(x), split(y)
  ms = (np.arange(chunks * chunk_size) < n).astype(np.float32).reshape(chunks, chunk_size)

  sums = jax.device_get(_chunk_grad_sums(loss_fn, params, xs, ys, ms))
  mean = jax.tree.map(lambda s: np.sum(np.asarray(s, np.float64), axis=0) / n, sums)
  grad_sq = float(sum(np.sum(np.square(m)) for m in jax.tree.leaves(mean)))
  mean32 = jax.tree.map(lambda m: np.asarray(m, np.float32), mean)
  dev = np.asarray(jax.device_get(_chunk_deviation_sums(loss_fn, params, mean32, xs, ys, ms)),
                   np.float64)
  return NoiseStats(grad_sq, float(np.sum(dev) / n), n)


@functools.partial(jax.jit, static_argnums=0)
def _chunk_grad_sums(loss_fn, params, xs, ys, ms):
  """Per chunk, the gradient of the masked loss sum: [chunks, ...] per leaf."""
  def chunk(args):
    xc, yc, mc = args
    total = lambda p: jnp.sum(jax.vmap(loss_fn, in_axes=(None, 0, 0))(p, xc, yc) * mc)
    return jax.grad(total)(params)
  return jax.lax.map(chunk, (xs, ys, ms))


@functools.partial(jax.jit, static_argnums=0)
def _chunk_deviation_sums(loss_fn, params, mean_grad, xs, ys, ms):
  """Per chunk, sum_i |g_i - G|^2 over its real examples: [chunks]."""
  per_example = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0, 0))

  def chunk(args):
    xc, yc, mc = args
    g = per_example(params, xc, yc)
    sq = sum(jnp.sum(jnp.square(a - b[None]).reshape(a.shape[0], -1), axis=1)
             for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(mean_grad)))
    return jnp.sum(sq * mc)
  return jax.lax.map(chunk, (xs, ys, ms))


# --------------------------------------------------------------------------------- fit


@dataclasses.dataclass(frozen=True)
class StepsFit:
  """S(k) = s_min (1 + b_noise / k); e_min = s_min * b_noise examples at small k."""

  s_min: float
  b_noise: float
  rms_log_error: float  # root mean square of log(S_measured / S_fit)

  @property
  def e_min(self) -> float:
    return self.s_min * self.b_noise

  def steps(self, k: np.ndarray | float) -> np.ndarray:
    return self.s_min * (1.0 + self.b_noise / np.asarray(k, np.float64))


def fit_steps(batch_sizes: Sequence[float], steps: Sequence[float]) -> StepsFit:
  """Least squares in log S of S = S_min (1 + B_noise / k), over the finite points.

  Log space because S spans decades and each point's error is relative. For a given
  B_noise the best log S_min is a mean, so only B_noise is searched: a log grid over
  six decades around the measured k, then golden-section refinement.
  """
  k = np.asarray(batch_sizes, np.float64)
  s = np.asarray(steps, np.float64)
  ok = np.isfinite(s) & (s > 0) & (k > 0)
  k, log_s = k[ok], np.log(s[ok])
  if len(k) < 2 or len(np.unique(k)) < 2:
    raise ValueError("fit_steps needs at least two distinct batch sizes that reached the target")

  def solve(log_b):
    shape = np.log1p(np.exp(log_b) / k)
    log_s_min = np.mean(log_s - shape)
    return float(np.mean(np.square(log_s - log_s_min - shape))), log_s_min

  lo, hi = math.log(k.min()) - 3 * math.log(10), math.log(k.max()) + 3 * math.log(10)
  grid = np.linspace(lo, hi, 601)
  i = int(np.argmin([solve(g)[0] for g in grid]))
  a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
  ratio = (math.sqrt(5) - 1) / 2
  for _ in range(80):
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    if solve(c)[0] < solve(d)[0]:
      b = d
    else:
      a = c
  log_b = (a + b) / 2
  mse, log_s_min = solve(log_b)
  return StepsFit(float(math.exp(log_s_min)), float(math.exp(log_b)), math.sqrt(mse))
