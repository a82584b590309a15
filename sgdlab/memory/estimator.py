"""Per-device bytes of a config at any k, read from the compiled programs that train.

Each candidate k is lowered and compiled with abstract inputs (nothing is allocated)
from the very `sgdlab.train.run.build_program` that trains, and its per-device bytes
are read from `compiled.memory_analysis()`:

  train step = argument + output + temp - alias   (peak_memory_in_bytes omits temp on CPU)
  per device = data + max(train step, eval step + optimizer state) + runtime terms

`data` is the dataset the trainer keeps on every device (train and test, float32).
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
from sgdlab.memory.units import format_bytes
from sgdlab.train import step
from sgdlab.train.run import Program, build_program, replicated_structs

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


def batch_struct(k: int, input_shape: Sequence[int], mesh: Mesh) -> dict[str, Any]:
  """The abstract global batch, sharded as shard_map's in_specs require."""
  sharded = NamedSharding(mesh, P(step.DATA))
  return dict(x=_struct((k, *input_shape), jnp.float32, sharded),
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


def _kind(module: Any) -> str:
  """A layer's kind by what it is (a remat block such as DenseReLU is a dense layer)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from sgdlab.models.conv import Conv  # pylint: disable=g-import-not-at-top
  for cls, kind in ((Conv, "conv"), (nn.Conv, "conv"), (nn.Dense, "dense")):
    if isinstance(module, cls):
      return kind
  return type(module).__name__.lower()


def layer_table(model: Any, params: Any, input_shape: Sequence[int]) -> list[Layer]:
  """Per layer, from one abstract forward pass; shape-changing functions between
  layers (pooling) get a row of their own, reshapes do not.
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  calls, active = [], set()

  def record(next_fun, args, kwargs, context):
    # The model's own layers, outermost call only (a block's __call__ calls its layer's).
    module = context.module
    if context.method_name != "__call__" or len(module.path) != 1 or module.path in active:
      return next_fun(*args, **kwargs)
    active.add(module.path)
    try:
      out = next_fun(*args, **kwargs)
    finally:
      active.discard(module.path)
    calls.append((module, args[0].shape, out.shape))
    return out

  def forward(params, x):
    with nn.intercept_methods(record):
      return model.apply({"params": params}, x, train=False)

  jax.eval_shape(forward, params, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
  rows, previous = [], (1, *input_shape)
  for module, in_shape, out_shape in calls:
    if math.prod(in_shape) != math.prod(previous):
      rows.append(Layer("(function)", "pool", tuple(in_shape[1:]), 0, 4 * math.prod(in_shape), 0))
    kind = _kind(module)
    workspace = 0
    if kind == "conv":  # the forward pass's buffer, as in conv_workspace_bytes
      window, c_in = math.prod(module.kernel_size), in_shape[-1]
      if c_in <= IM2COL_MAX_CHANNELS:
        workspace = 4 * math.prod(out_shape[1:-1]) * window * c_in
      else:
        reach = [o + k - 1 for o, k in zip(out_shape[1:-1], module.kernel_size)]
        workspace = 4 * math.prod(reach) * c_in
    n_params = sum(math.prod(a.shape) for a in jax.tree.leaves(params.get(module.name, {})))
    rows.append(Layer(module.name, kind, tuple(out_shape[1:]), n_params,
                      4 * math.prod(out_shape), workspace))
    previous = out_shape
  return rows


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
    example = math.prod(self.spec.input_shape) * 4 + 4  # float32 pixels, int32 label
    self.streamed = self.config.data.pipeline == "grain"  # batches only, no resident set
    self.data_bytes = 0 if self.streamed else (self.spec.n_train + self.spec.n_test) * example
    self.eval_k = (-(-min(self.config.eval_batch_size, self.spec.n_test) // mesh.size)
                   * mesh.size)
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
                                      batch_struct(k, self.spec.input_shape, self.mesh),
                                      cpu=self.cpu)
      logging.info("k=%d: %s per device (compiled in %.2fs)", k,
                   format_bytes(self.total(k)), self.probes[k].seconds)
    return self.probes[k]

  def eval_step(self) -> Compiled:
    """The eval step compiled at the trainer's eval batch size (cached)."""
    if self._eval is None:
      program = self.program(self.unit)
      self.compiles += 1
      self._eval = compile_memory(program.eval_step, self.abstract_state.params,
                                  batch_struct(self.eval_k, self.spec.input_shape, self.mesh),
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
    lines = {"data (train + test, on every device)": self.data_bytes,
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
    n, m, shape = self.spec.n_train, self.spec.n_test, self.spec.input_shape
    train_data = (_struct((n, *shape), jnp.float32, rep), _struct((n,), jnp.int32, rep))
    test_data = (_struct((m, *shape), jnp.float32, rep), _struct((m,), jnp.int32, rep))
    if self._evaluate is None:
      self.compiles += 1
      self._evaluate = compile_memory(self.program(self.unit).evaluate_fn(),
                                      self.abstract_state.params, *test_data, cpu=self.cpu)
    if k not in self.epochs:
      self.compiles += 1
      program = self.program(k)
      steps = program.steps_per_call  # the length the trainer compiles
      feed = dict(idx=_struct((steps, k), jnp.int32, rep),
                  mask=_struct((steps, k), jnp.float32, rep))
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
