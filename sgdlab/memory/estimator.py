"""Per-device bytes of a config at any k, read from the compiled programs that train.

Each candidate k is lowered and compiled with abstract inputs (nothing is allocated)
from the very `sgdlab.train.run.build_program` that trains, and its per-device bytes
are read from `compiled.memory_analysis()`:

  train step = argument + output + temp - alias   (peak_memory_in_bytes omits temp on CPU)
  per device = data + max(train step, eval step + optimizer state) + runtime terms

`data` is the dataset the trainer keeps on every device (train and test, in their stored
dtype: uint8 pixels are 1 byte, float32 4).
Runtime terms are what XLA's analysis does not count (`sgdlab.memory.cpu_runtime`).

What is promised is what the trainer runs (its advance scan over an epoch and its
evaluation; trial mode runs the same). On CPU a hand-written loop that calls the jitted
step directly was measured to need more than that step's analysis says (about +30% for
an 8 -> 8 channel CNN; the cause is not pinned down), while the trainer's scan of the
same step stayed within the model.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sgdlab.config import Resolved
from sgdlab.memory.cpu_runtime import (CPU_RESERVE_BYTES, CPU_RESERVE_FRACTION,
                                       IM2COL_MAX_CHANNELS, conv_workspace_bytes)
from sgdlab.units import format_bytes
from sgdlab.train import step
from sgdlab.data.pipeline import replicated_structs
from sgdlab.train.program import Program, build_program

# Faster compiles with identical buffer assignment: only LLVM's work is reduced
# (tests/memory checks the numbers are equal).
_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}

# ---------------------------------------------------------------- compiling a k


@dataclasses.dataclass(frozen=True)
class Compiled:
  """XLA's per-device analysis of one compiled program, plus the CPU conv workspace."""

  argument: int
  output: int
  temp: int
  alias: int
  workspace: int
  seconds: float

  @property
  def xla(self) -> int:
    return self.argument + self.output + self.temp - self.alias

  @property
  def total(self) -> int:
    return self.xla + self.workspace


def _analysis_field(analysis: Any, name: str) -> int:
  value = analysis.get(name) if isinstance(analysis, dict) else getattr(analysis, name, None)
  return int(value or 0)


def compile_memory(fn: Callable, *args: Any, cpu: bool) -> Compiled:
  """Lower and compile `jax.jit(fn)` on abstract args; read its memory analysis."""
  t0 = time.perf_counter()
  lowered = jax.jit(fn).lower(*args)
  try:
    compiled = lowered.compile(compiler_options=_COMPILER_OPTIONS)
  except Exception:  # an unknown option on another backend: the default compile
    compiled = lowered.compile()
  analysis = compiled.memory_analysis()
  if analysis is None:
    raise RuntimeError("this backend gives no memory_analysis(); use --method=trial")
  fields = {f: _analysis_field(analysis, f"{f}_size_in_bytes")
            for f in ("argument", "output", "temp", "alias")}
  workspace = conv_workspace_bytes(compiled.as_text()) if cpu else 0
  return Compiled(**fields, workspace=workspace, seconds=time.perf_counter() - t0)


def _nbytes(tree: Any) -> int:
  return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree))


def _struct(shape: Sequence[int], dtype: Any, sharding: NamedSharding) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def batch_struct(k: int, input_shape: Sequence[int], mesh: Mesh,
                 dtype: Any = jnp.float32, seq_len: int = 0) -> dict[str, Any]:
  """The abstract global batch (images in their stored dtype; for text, int32 windows
  and their targets), sharded as shard_map's in_specs require."""
  sharded = NamedSharding(mesh, P(step.DATA))
  if seq_len:
    x = _struct((k, seq_len), jnp.int32, sharded)
    return dict(x=x, y=x, mask=_struct((k,), jnp.float32, sharded))
  return dict(x=_struct((k, *input_shape), dtype, sharded),
              y=_struct((k,), jnp.int32, sharded), mask=_struct((k,), jnp.float32, sharded))


@dataclasses.dataclass(frozen=True)
class Layer:
  """One layer's share: parameters, and per-example bytes of its output."""

  name: str
  kind: str
  output_shape: tuple[int, ...]
  params: int
  activation_bytes: int  # float32 output, per example
  workspace_bytes: int  # CPU runtime buffer of a conv's forward pass, per example


def _kind(module: Any) -> str | None:
  """A layer's kind by what it is (a remat block such as DenseReLU is a dense layer);
  None for containers (blocks, the model), whose layers get the rows."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from sgdlab.models.batchnorm import BatchNorm  # pylint: disable=g-import-not-at-top
  from sgdlab.models.conv import Conv  # pylint: disable=g-import-not-at-top
  from sgdlab.models.transformer import CausalSelfAttention, TokenEmbedding  # noqa
  for cls, kind in ((Conv, "conv"), (nn.Conv, "conv"), (nn.Dense, "dense"),
                    (BatchNorm, "batchnorm"), (nn.LayerNorm, "layernorm"),
                    (CausalSelfAttention, "attention"), (TokenEmbedding, "embedding"),
                    (nn.Embed, "embedding"), (nn.Dropout, "dropout")):
    if isinstance(module, cls):
      return kind
  return None


def _activation_bytes(module: Any, kind: str, out_shape: Sequence[int]) -> int:
  """Float32 bytes per example a layer keeps for the backward pass: its output; for
  attention also q, k, v and the [heads, L, L] probabilities, which grow as L^2."""
  out = 4 * math.prod(out_shape[1:])
  if kind == "attention":
    length = out_shape[1]
    return 4 * out + 4 * module.heads * length * length
  return out


def layer_table(model: Any, params: Any, input_shape: Sequence[int],
                batch_stats: Any = None, input_dtype: Any = jnp.float32) -> list[Layer]:
  """Per layer, from one abstract forward pass: every conv, dense, dropout, batch or
  layer norm, attention and embedding (token lookup and, tied, the output projection), inside
  blocks too; shape-changing functions between layers (pooling) get a row of their
  own, reshapes and residual additions do not. Parameters held by no layer (a learned
  position table) get a row of kind "parameter". batch_stats: batch norm's running
  averages, which an evaluation-mode forward pass reads; input_dtype int32 for tokens.
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  calls, active = [], []

  def record(next_fun, args, kwargs, context):
    # Each layer's outermost call only (a block's layer calls its parent class's).
    module = context.module
    kind = _kind(module)
    if kind is None or context.method_name not in ("__call__", "attend") or active:
      return next_fun(*args, **kwargs)
    active.append(module.path)
    try:
      out = next_fun(*args, **kwargs)
    finally:
      active.pop()
    name = "/".join(module.path) + ("" if context.method_name == "__call__" else ".attend")
    calls.append((name, module, kind, tuple(args[0].shape), tuple(out.shape)))
    return out

  def forward(variables, x):
    with nn.intercept_methods(record):
      return model.apply(variables, x, train=False)

  variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
  jax.eval_shape(forward, variables, jax.ShapeDtypeStruct((1, *input_shape), input_dtype))
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  owned = set()
  rows, seen = [], {math.prod((1, *input_shape))}
  for name, module, kind, in_shape, out_shape in calls:
    if math.prod(in_shape) not in seen and kind not in ("embedding",):
      rows.append(Layer("(function)", "pool", in_shape[1:], 0, 4 * math.prod(in_shape), 0))
    workspace = 0
    if kind == "conv":  # the forward pass's buffer, as in conv_workspace_bytes
      window, c_in = math.prod(module.kernel_size), in_shape[-1]
      if c_in <= IM2COL_MAX_CHANNELS:
        workspace = 4 * math.prod(out_shape[1:-1]) * window * c_in
      else:
        reach = [o + k - 1 for o, k in zip(out_shape[1:-1], module.kernel_size)]
        workspace = 4 * math.prod(reach) * c_in
    prefix = "/".join(module.path) + "/"
    mine = [] if name.endswith(".attend") else [p for p in flat if p.startswith(prefix)]
    owned.update(mine)
    rows.append(Layer(name, kind, out_shape[1:], sum(math.prod(flat[p].shape) for p in mine),
                      _activation_bytes(module, kind, out_shape), workspace))
    seen.add(math.prod(out_shape))
  loose = [Layer(p, "parameter", tuple(flat[p].shape), math.prod(flat[p].shape), 0, 0)
           for p in flat if p not in owned]
  return loose + rows


class Estimator:
  """Per-device bytes of one config at any k, from compiled programs (cached per k).

  Everything is per device: the global k is split over `mesh`; the state and the
  dataset are replicated on every device, as the trainer places them.
  """

  def __init__(self, resolved: Resolved, mesh: Mesh, *, target: str | None = None,
               eval_from: Estimator | None = None):
    """eval_from: an estimator of the same model and dtype whose evaluation programs
    this one reuses (micro-batching and remat do not change evaluation)."""
    self.target = target or ("cpu" if mesh.devices.flat[0].platform == "cpu" else "accelerator")
    self.cpu = self.target == "cpu"
    if not self.cpu and resolved.config.model.conv_impl == "auto":
      # What "auto" compiles to on an accelerator: XLA's own convolution gradient.
      resolved = resolved.with_fields(**{"model.conv_impl": "xla"})
    self.resolved = resolved
    self.config = resolved.config
    self.mesh = mesh
    self.spec = resolved.spec
    self.unit = resolved.batch_unit
    self.cap = self.spec.n_train // self.unit * self.unit
    self.probes: dict[int, Compiled] = {}
    self.compiles = 0
    self._programs: dict[int, Program] = {}
    program = self.program(max(self.unit, 1))
    self.abstract_state = replicated_structs(program.abstract_state(), mesh)
    self.state_bytes = _nbytes(self.abstract_state)
    self.param_bytes = _nbytes(self.abstract_state.params)
    pixel = np.dtype(self.spec.dtype).itemsize  # as stored: uint8 1 byte, float32 4
    # An example and its int32 label; text: a window's tokens, one byte each.
    example = (self.spec.seq_len if self.spec.seq_len
               else math.prod(self.spec.input_shape) * pixel + 4)
    self.streamed = self.config.data.pipeline == "grain"  # batches only, no resident set
    self.data_bytes = 0 if self.streamed else (
        self.spec.n_train + self.spec.n_test + self.spec.n_validation) * example
    self.eval_k = program.eval_batch(self.spec.n_test)
    self._eval: Compiled | None = eval_from.eval_step() if eval_from else None
    self._evaluate: Compiled | None = eval_from._evaluate if eval_from else None
    self.epochs: dict[int, Compiled] = {}  # the trainer's epoch program per k

  def program(self, k: int) -> Program:
    """The trainer's Program at batch size k (what `sgdlab.train` compiles). A planned
    micro-batch belongs to its own k; other k (the state, evaluation) compile without."""
    if k not in self._programs:
      resolved = self.resolved
      if self.config.microbatch_size and k != self.config.batch_size:
        resolved = resolved.with_fields(microbatch_size=0)
      self._programs[k] = build_program(resolved.with_batch_size(k), self.mesh)
    return self._programs[k]

  def train_step(self, k: int) -> Compiled:
    """The train step compiled at k (cached)."""
    if k not in self.probes:
      program = self.program(k)
      self.compiles += 1
      self.probes[k] = compile_memory(program.train_step, self.abstract_state,
                                      batch_struct(k, self.spec.input_shape, self.mesh,
                                                   self.spec.dtype, self.spec.seq_len),
                                      cpu=self.cpu)
      logging.info("k=%d: %s per device (compiled in %.2fs)", k,
                   format_bytes(self.total(k)), self.probes[k].seconds)
    return self.probes[k]

  def eval_step(self) -> Compiled:
    """The eval step compiled at the trainer's eval batch size (cached)."""
    if self._eval is None:
      program = self.program(self.unit)
      self.compiles += 1
      self._eval = compile_memory(program.eval_step, step.eval_variables(self.abstract_state),
                                  batch_struct(self.eval_k, self.spec.input_shape, self.mesh,
                                               self.spec.dtype, self.spec.seq_len),
                                  cpu=self.cpu)
    return self._eval

  def eval_bytes(self) -> int:
    """Peak while evaluating: the eval step, and the optimizer state still resident."""
    return self.eval_step().total + self.state_bytes - self.param_bytes

  def total(self, k: int) -> int:
    return self.with_reserve(self.modeled(k))

  def modeled(self, k: int) -> int:
    """Bytes from compiled programs (and the CPU conv buffers), before the reserve."""
    return self.data_bytes + max(self.train_step(k).total, self.eval_bytes())

  def with_reserve(self, modeled: int) -> int:
    """Modeled bytes plus the CPU runtime reserve (nothing on accelerators)."""
    if not self.cpu:
      return modeled
    return modeled + CPU_RESERVE_BYTES + int(CPU_RESERVE_FRACTION * modeled)

  def without_reserve(self, limit: int) -> int:
    """The modeled bytes that fit under `limit` once the reserve is added."""
    if not self.cpu:
      return limit
    return int((limit - CPU_RESERVE_BYTES) / (1 + CPU_RESERVE_FRACTION))

  def breakdown(self, k: int) -> dict[str, int]:
    """Lines that sum to total(k): where the bytes of one device go at this k."""
    c = self.train_step(k)
    lines = {"data (every split, on every device)": self.data_bytes,
             "parameters": self.param_bytes,
             "optimizer state": self.state_bytes - self.param_bytes,
             "batch": c.argument - self.state_bytes,
             "step outputs (new parameters, optimizer state)": c.output,
             "activations and temporaries": c.temp}
    if c.alias:
      lines["reused (aliased) buffers"] = -c.alias
    if self.cpu:
      lines["conv patch buffers (CPU runtime)"] = c.workspace
    if self.eval_bytes() > c.total:
      lines[f"eval step at k={self.eval_k}, beyond the train step"] = self.eval_bytes() - c.total
    if self.cpu:
      label = f"CPU runtime reserve ({CPU_RESERVE_BYTES >> 20} MiB + {CPU_RESERVE_FRACTION:.0%})"
      lines[label] = self.total(k) - sum(lines.values())
    return lines

  def trainer_total(self, k: int) -> int:
    """Bytes of what the trainer actually compiles at k: its advance scan, then evaluation."""
    if self.streamed:
      return self._streamed_trainer_total(k)
    rep = NamedSharding(self.mesh, P())
    n, m, shape, dtype = (self.spec.n_train, self.spec.n_test, self.spec.input_shape,
                          self.spec.dtype)
    if self.spec.seq_len:  # token streams (a test split of m windows: m L + 1 tokens)
      train_data = (_struct((self.spec.train_tokens,), dtype, rep), _struct((0,), jnp.int32, rep))
      test_data = (_struct((m * self.spec.seq_len + 1,), dtype, rep),
                   _struct((0,), jnp.int32, rep))
    else:
      train_data = (_struct((n, *shape), dtype, rep), _struct((n,), jnp.int32, rep))
      test_data = (_struct((m, *shape), dtype, rep), _struct((m,), jnp.int32, rep))
    if self._evaluate is None:
      self.compiles += 1
      self._evaluate = compile_memory(self.program(self.unit).evaluate_fn(),
                                      step.eval_variables(self.abstract_state), *test_data,
                                      cpu=self.cpu)
    if k not in self.epochs:
      self.compiles += 1
      program = self.program(k)
      feed = program.feed_structs(program.steps_per_call)  # the length the trainer compiles
      self.epochs[k] = compile_memory(program.advance_fn(), self.abstract_state, *train_data,
                                      feed, cpu=self.cpu)
    return self.with_reserve(max(
        self.epochs[k].total + _nbytes(test_data),
        self._evaluate.total + _nbytes(train_data) + self.state_bytes - self.param_bytes))

  def _streamed_trainer_total(self, k: int) -> int:
    """The grain pipeline's trainer: one call's batches arrive as arguments (the next
    call's are placed while it runs: twice), evaluation a batch at a time."""
    if k not in self.epochs:
      self.compiles += 1
      program = self.program(k)
      feed = program.feed_structs(program.steps_per_call)
      compiled = compile_memory(program.advance_fn(), self.abstract_state, feed, cpu=self.cpu)
      next_feed = _nbytes(feed) // self.mesh.size  # per device: the feed is split along k
      self.epochs[k] = dataclasses.replace(compiled, argument=compiled.argument + next_feed)
    return self.with_reserve(max(self.epochs[k].total, self.eval_bytes()))
