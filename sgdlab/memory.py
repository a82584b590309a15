"""How large a batch fits: compile the real train step per candidate k, read XLA's memory.

Finding k by trial (run 512, halve on out-of-memory, ...) allocates real memory, takes
minutes per trial on big models and can still pick a k that fails later in the eval
step. Here each candidate k is lowered and compiled with abstract inputs (nothing is
allocated) from the very `trainer.build_program` that trains, and its per-device bytes
are read from `compiled.memory_analysis()`:

  train step = argument + output + temp - alias   (peak_memory_in_bytes omits temp on CPU)
  per device = data + max(train step, eval step + optimizer state) + runtime terms

`data` is the dataset the trainer keeps on every device (train and test, float32).
Runtime terms are what XLA's analysis does not count; measured on the CPU runtime of
jax 0.10 (tests/test_memory.py checks them against real out-of-memory failures):
* a convolution may build an im2col patch buffer, [batch x output pixels, window x
  input channels], outside XLA's buffers; the largest one counts (they run one after
  another). It is an upper bound: the runtime skips the buffer for some shapes (8 -> 4
  channels, 3 -> 64) and builds it in pieces for wide ones (32 -> 32), where compile
  mode is cautious, by up to a power of two. Accelerators count their conv workspaces
  inside XLA's temp.
* the CPU runtime reserve (CPU_RESERVE_BYTES plus CPU_RESERVE_FRACTION of the rest):
  compiled code, compile-time memory, staging copies. Thread stacks and malloc arenas
  are counted as used before the budget is measured (`warm_up`).
`headroom` then keeps a fraction of the budget free for what no model sees
(fragmentation, library workspaces, collectives).

What is promised is what the trainer runs (its epoch scan and evaluation; trial mode
runs the same). On CPU a hand-written loop that calls the jitted step directly was
measured to need more than that step's analysis says (about +30% for an 8 -> 8
channel CNN; the cause is not pinned down), while the trainer's scan of the same step
stayed within the model.

Search: powers of two (times the device count) upward, each jump predicted by an
affine fit of bytes in k and certified by compiling the boundary pair; then the exact
largest k between them, by interpolation with a bisection fallback. Finally the
trainer's own programs (its epoch scan and its evaluation scan) are compiled at the
answer, and the answer moves down if they need more than the step. Trial mode
(`sgdlab.trials`) is the manual procedure, one child process per trial, for comparison.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import resource
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sgdlab import data, step
from sgdlab.errors import ConfigError

# What the CPU runtime maps beyond XLA's buffers and the conv patch buffers (compiled
# code, compile-time memory, allocator slack), as address space after `warm_up`:
# 50-160 MiB over 10 configurations (MLP and CNN, k=64..8192, 0.3-6 GiB), measured as
# the smallest RLIMIT_AS under which real steps ran. Reserved: 160 MiB plus 5% of the
# modeled bytes. tests/test_memory.py checks it against real out-of-memory failures.
CPU_RESERVE_BYTES = 192 << 20
CPU_RESERVE_FRACTION = 0.05
# Faster compiles with identical buffer assignment: only LLVM's work is reduced
# (tests/test_memory.py checks the numbers are equal).
_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_BYTES_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")
_BUDGET_HELP = "bytes as an integer or with a unit, e.g. 8GiB, 512MiB, 16GB"


def parse_bytes(text: str | int, field: str = "memory_budget") -> int:
  """Bytes from '8GiB', '512MiB', '16GB' (decimal units), '8G' (binary, as ulimit) or an int."""
  if isinstance(text, int) and not isinstance(text, bool):
    value = text
  else:
    match = _BYTES_RE.match(str(text))
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
      raise ConfigError(field, text, _BUDGET_HELP)
    value = int(float(match.group(1)) * _UNITS[unit])
  if value <= 0:
    raise ConfigError(field, text, f"a positive amount: {_BUDGET_HELP}")
  return value


def format_bytes(n: float) -> str:
  sign, n = ("-" if n < 0 else ""), abs(n)
  for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
    if n >= size:
      return f"{sign}{n / size:.2f} {unit}"
  return f"{sign}{int(n)} B"


# --------------------------------------------------------------------------- budget


@dataclasses.dataclass(frozen=True)
class Budget:
  """Bytes one device may use, and where the number came from."""

  bytes: int
  headroom: float
  source: str
  given: str = ""  # the user's text, when the budget was explicit

  @property
  def value(self) -> str:
    """What a ConfigError names: the user's budget, or where it came from."""
    return self.given or self.source

  @property
  def usable(self) -> int:
    return int(self.bytes * (1.0 - self.headroom))


def address_space_bytes(field: str = "VmSize") -> int:
  """This process's mapped address space (VmSize), or its peak (VmPeak), in bytes."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise OSError(f"no {field} in /proc/self/status")


def _host_free_bytes() -> tuple[int, str]:
  """What this process may still allocate: the tightest of RAM, cgroup and RLIMIT_AS."""
  options = []
  try:
    with open("/proc/meminfo") as f:
      info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    options.append((info["MemAvailable"], "available RAM"))
  except (OSError, KeyError, ValueError):
    pass
  try:
    with open("/sys/fs/cgroup/memory.max") as f:
      limit = f.read().strip()
    with open("/sys/fs/cgroup/memory.current") as f:
      current = int(f.read())
    if limit != "max":
      options.append((int(limit) - current, "cgroup memory.max minus memory.current"))
  except (OSError, ValueError):
    pass
  soft, _ = resource.getrlimit(resource.RLIMIT_AS)
  if soft != resource.RLIM_INFINITY:
    # An address-space limit counts everything mapped: what is mapped now is used.
    options.append((soft - address_space_bytes(),
                    "RLIMIT_AS minus this process's address space"))
  if not options:
    raise ConfigError("memory_budget", "", "an explicit budget: this machine's free memory "
                      "could not be read")
  return min(options)


def warm_up(mesh: Mesh) -> None:
  """Start the CPU runtime's worker threads before measuring what the process uses.

  Each thread that allocates gets its own malloc arena, reserved in 64 MiB steps: a
  fresh process maps up to ~1 GiB more address space at its first real computation.
  Counting that as already used keeps the budget from being spent on it later.
  """
  rep = NamedSharding(mesh, P())
  x = jax.device_put(jnp.ones((64, 32, 32, 8), jnp.float32), rep)
  w = jax.device_put(jnp.ones((3, 3, 8, 8), jnp.float32), rep)

  def work(x, w):  # a conv, its gradient and a matmul: what training steps call
    conv = lambda w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
    loss, grad = jax.value_and_grad(lambda w: jnp.sum(jnp.tanh(conv(w))))(w)
    m = x.reshape(256, -1)
    return loss + jnp.sum(grad) + jnp.sum(m @ m.T)

  for _ in range(3):
    jax.block_until_ready(jax.jit(work)(x, w))


def device_budget(mesh: Mesh, memory_budget: str | int = "", headroom: float = 0.1) -> Budget:
  """The per-device budget: explicit, else the device's free memory (see module doc)."""
  if not 0.0 <= headroom < 1.0:
    raise ConfigError("memory_headroom", headroom, "a fraction in [0, 1)")
  if memory_budget not in ("", None):
    return Budget(parse_bytes(memory_budget), headroom, f"memory_budget={memory_budget}",
                  given=str(memory_budget))
  devices = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  if devices[0].platform == "cpu":
    # Fake CPU devices share one process: split what it may still use between them.
    warm_up(mesh)
    free, why = _host_free_bytes()
    return Budget(max(free, 0) // len(devices), headroom,
                  f"{why}, split over {len(devices)} CPU device(s)")
  limits = []
  for d in devices:
    stats = d.memory_stats() or {}
    if "bytes_limit" in stats:
      limits.append(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  if not limits:
    raise ConfigError("memory_budget", "", f"an explicit budget: {devices[0].platform} "
                      "devices report no memory_stats()['bytes_limit']")
  return Budget(min(limits), headroom, f"bytes_limit - bytes_in_use of {devices[0]}")


# --------------------------------------------------------------- what XLA misses


_INSTR_RE = re.compile(r"%([\w.\-]+) = (\w+)\[([\d,]*)\]")
_CONV_RE = re.compile(r"= (\w+)\[([\d,]*)\]\S* convolution\(([^)]*)\), window=\{([^}]*)\}.*?"
                      r"dim_labels=([a-z0-9]+)_([a-z0-9]+)->([a-z0-9]+)")
_HLO_ITEMSIZE = {"f16": 2, "bf16": 2, "f32": 4, "f64": 8, "s8": 1, "u8": 1, "s32": 4}
# Up to this many input channels the CPU runtime builds a convolution's im2col buffer;
# wider convolutions read a padded copy of their input instead (measured, jax 0.10).
IM2COL_MAX_CHANNELS = 16


def _window(text: str, key: str, n: int, default: int) -> list[int]:
  m = re.search(key + r"=([\dx]+)", text)
  return [int(v) for v in m.group(1).split("x")] if m else [default] * n


def conv_workspace_bytes(hlo_text: str) -> int:
  """The largest buffer the XLA:CPU runtime allocates for one convolution outside XLA's
  buffer assignment (they run one after another); 0 without convolutions. By kind:
  * a weight gradient (window larger than its output): copies of both operands, the
    input padded;
  * at most IM2COL_MAX_CHANNELS input channels: the im2col buffer, batch x output
    pixels rows by window x input channels;
  * wider: the input, padded to the window's reach, copied once.
  Measured against the process's growth; an upper bound where the runtime takes a
  cheaper path (e.g. 8 -> 4 and 3 -> 64 channels build neither).
  """
  shapes = {m.group(1): (m.group(2), [int(d) for d in m.group(3).split(",") if d])
            for m in _INSTR_RE.finditer(hlo_text)}
  largest = 0
  for m in _CONV_RE.finditer(hlo_text):
    dtype, out_dims = m.group(1), [int(d) for d in m.group(2).split(",") if d]
    names = [o.strip().split()[-1].lstrip("%") for o in m.group(3).split(",")]
    lhs_labels, rhs_labels, out_labels = m.group(5), m.group(6), m.group(7)
    if len(names) != 2 or any(n not in shapes for n in names):
      continue
    lhs, rhs = shapes[names[0]][1], shapes[names[1]][1]
    if len(lhs) != len(lhs_labels) or len(rhs) != len(rhs_labels) or "f" not in out_labels:
      continue
    itemsize = _HLO_ITEMSIZE.get(dtype, 4)
    spatial = [c for c in out_labels if c.isdigit()]
    out_pixels = math.prod(out_dims[out_labels.index(c)] for c in spatial)
    size = [rhs[rhs_labels.index(c)] for c in spatial]
    if math.prod(size) > out_pixels:  # a weight gradient: the "window" is the image
      pads = re.search(r"pad=([\d_x\-]+)", m.group(4))
      pads = [sum(int(v) for v in p.split("_")) for p in pads.group(1).split("x")] if pads \
          else [0] * len(spatial)
      padded = math.prod(lhs) * math.prod(
          (lhs[lhs_labels.index(c)] + p) / lhs[lhs_labels.index(c)] for c, p in zip(spatial, pads))
      need = int(padded * _HLO_ITEMSIZE.get(shapes[names[0]][0], 4) +
                 math.prod(rhs) * _HLO_ITEMSIZE.get(shapes[names[1]][0], 4))
    elif rhs[rhs_labels.index("i")] <= IM2COL_MAX_CHANNELS:
      rows = math.prod(out_dims) // max(out_dims[out_labels.index("f")], 1)
      need = rows * math.prod(size) * rhs[rhs_labels.index("i")] * itemsize
    else:
      stride = _window(m.group(4), "stride", len(spatial), 1)
      reach = [(out_dims[out_labels.index(c)] - 1) * st + sz
               for c, st, sz in zip(spatial, stride, size)]
      need = (lhs[lhs_labels.index("b")] * math.prod(reach) * lhs[lhs_labels.index("f")] *
              itemsize)
    largest = max(largest, need)
  return largest


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


def with_batch_size(config: ml_collections.ConfigDict, k: int) -> ml_collections.ConfigDict:
  """A copy of the config at batch size k."""
  config = copy.deepcopy(config)
  config.batch_size = int(k)
  return config


@dataclasses.dataclass(frozen=True)
class Layer:
  """One layer's share: parameters, and per-example bytes of its output."""

  name: str
  kind: str
  output_shape: tuple[int, ...]
  params: int
  activation_bytes: int  # float32 output, per example
  workspace_bytes: int  # CPU runtime buffer of a conv's forward pass, per example


def layer_table(model: Any, params: Any, input_shape: Sequence[int]) -> list[Layer]:
  """Per layer, from one abstract forward pass; shape-changing functions between
  layers (pooling) get a row of their own, reshapes do not.
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  calls = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and len(context.module.path) == 1:
      calls.append((context.module, args[0].shape, out.shape))  # the model's own layers
    return out

  def forward(params, x):
    with nn.intercept_methods(record):
      return model.apply({"params": params}, x, train=False)

  jax.eval_shape(forward, params, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
  rows, previous = [], (1, *input_shape)
  for module, in_shape, out_shape in calls:
    if math.prod(in_shape) != math.prod(previous):
      rows.append(Layer("(function)", "pool", tuple(in_shape[1:]), 0, 4 * math.prod(in_shape), 0))
    kind = type(module).__name__.lower()
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

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh,
               spec: data.DataSpec | None = None, *, target: str | None = None):
    from sgdlab import trainer  # pylint: disable=g-import-not-at-top
    self._trainer = trainer
    self.config = config
    self.mesh = mesh
    self.spec = data.describe(config.data) if spec is None else spec
    self.target = target or ("cpu" if mesh.devices.flat[0].platform == "cpu" else "accelerator")
    self.cpu = self.target == "cpu"
    self.unit = mesh.size * (2 if config.noise_scale and mesh.size == 1 else 1)
    self.cap = self.spec.n_train // self.unit * self.unit
    self.probes: dict[int, Compiled] = {}
    self.compiles = 0
    program = self.program(max(self.unit, 1))
    self.abstract_state = self._replicated(program.abstract_state())
    self.state_bytes = _nbytes(self.abstract_state)
    self.param_bytes = _nbytes(self.abstract_state.params)
    example = math.prod(self.spec.input_shape) * 4 + 4  # float32 pixels, int32 label
    self.data_bytes = (self.spec.n_train + self.spec.n_test) * example
    self.eval_k = -(-min(config.eval_batch_size, self.spec.n_test) // mesh.size) * mesh.size
    self._eval: Compiled | None = None
    self._evaluate: Compiled | None = None
    self.epochs: dict[int, Compiled] = {}  # the trainer's epoch scan per k

  def program(self, k: int):
    return self._trainer.build_program(with_batch_size(self.config, k), self.spec, self.mesh)

  def _replicated(self, tree: Any) -> Any:
    rep = NamedSharding(self.mesh, P())
    return jax.tree.map(lambda a: _struct(a.shape, a.dtype, rep), tree)

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
    """Bytes of what the trainer actually compiles at k: the epoch scan, then evaluation."""
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
      self.epochs[k] = compile_memory(self.program(k).epoch_fn(), self.abstract_state,
                                      *train_data, _struct((2,), jnp.uint32, rep),
                                      jnp.int32(0), cpu=self.cpu)
    return self.with_reserve(max(
        self.epochs[k].total + _nbytes(test_data),
        self._evaluate.total + _nbytes(train_data) + self.state_bytes - self.param_bytes))


# ------------------------------------------------------------------------ search


@dataclasses.dataclass
class FitReport:
  """The answer for one config and budget; `to_dict` is what fit.json holds."""

  config_name: str
  input_shape: tuple[int, ...]
  n_devices: int
  target: str
  budget: Budget
  largest_power_of_two: int
  largest_k: int | None
  probes: dict[int, int]  # k -> per-device bytes
  breakdown: dict[str, int]  # at largest_k (or the power of two when not exact)
  layers: list[Layer]
  eval_batch_size: int
  trainer_bytes: int | None  # the trainer's epoch + eval programs at the chosen k
  notes: list[str]
  search_seconds: float
  compiles: int
  slope_bytes_per_example: float  # per device, per example on that device

  @property
  def chosen(self) -> int:
    return self.largest_k or self.largest_power_of_two

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["budget"] = dict(dataclasses.asdict(self.budget), usable=self.budget.usable)
    d["probes"] = [dict(k=k, bytes=b, fits=b <= self.budget.usable)
                   for k, b in sorted(self.probes.items())]
    return d

  def table(self) -> str:
    """A plain-text report: the answer, the probes, the breakdown and the layers."""
    b = self.budget
    lines = [f"budget per device: {format_bytes(b.bytes)} ({b.source}); usable "
             f"{format_bytes(b.usable)} after {b.headroom:.0%} headroom; target {self.target}",
             f"input {self.input_shape}, {self.n_devices} device(s): largest power of two "
             f"k={self.largest_power_of_two}" +
             (f", largest k={self.largest_k}" if self.largest_k else "") +
             f"  [{self.compiles} compiles, {self.search_seconds:.1f}s]", "",
             f"{'k':>8}  {'bytes/device':>12}  fits"]
    lines += [f"{k:>8}  {format_bytes(v):>12}  {'yes' if v <= b.usable else 'no'}"
              for k, v in sorted(self.probes.items())]
    lines += ["", f"breakdown at k={self.chosen}:"]
    lines += [f"  {name:<48} {format_bytes(v):>12}" for name, v in self.breakdown.items()]
    lines.append(f"  {'total':<48} {format_bytes(sum(self.breakdown.values())):>12}")
    lines += ["", f"{'layer':<12} {'kind':<8} {'output':<16} {'params':>10} "
              f"{'act B/ex':>10} {'patch B/ex':>10}"]
    lines += [f"{l.name:<12} {l.kind:<8} {str(l.output_shape):<16} {l.params:>10,} "
              f"{l.activation_bytes:>10,} {l.workspace_bytes:>10,}" for l in self.layers]
    lines += [f"note: {n}" for n in self.notes]
    return "\n".join(lines)


def _affine_guess(points: list[tuple[int, int]], limit: int, fixed: int) -> float:
  """The k where bytes reach `limit`, on the line through the two largest points
  (through `fixed` at k=0 when only one point is known). inf when bytes do not grow.
  """
  points = sorted(points)[-2:]
  (k1, b1), (k2, b2) = ((0, fixed), points[0]) if len(points) == 1 else points
  slope = (b2 - b1) / (k2 - k1)
  return math.inf if slope <= 0 else k2 + (limit - b2) / slope


def powers_of_two(unit: int, cap: int) -> list[int]:
  """unit, 2 unit, 4 unit, ... up to cap: the candidates of both modes."""
  return [unit << j for j in range(64) if unit << j <= cap]


def find_batch_size(config: ml_collections.ConfigDict, budget: Budget | None = None, *,
                    mesh: Mesh | None = None, spec: data.DataSpec | None = None,
                    target: str | None = None, exact: bool = True,
                    check_trainer: bool = True,
                    estimator: Estimator | None = None) -> FitReport:
  """The largest power-of-two k (times the device count), and the exact largest k,
  whose compiled train step fits the budget; raises ConfigError when nothing fits.

  budget: default from config.memory_budget / memory_headroom (see `device_budget`).
  target: "cpu" or "accelerator" runtime terms; default the mesh's platform.
  check_trainer: also compile the trainer's epoch and eval programs at the answer
    and step down if they need more than the train step predicted.
  estimator: reuse one Estimator's compiled programs across budgets (same config).
  """
  t0 = time.perf_counter()
  mesh = (estimator.mesh if estimator else step.make_mesh()) if mesh is None else mesh
  budget = budget or device_budget(mesh, config.memory_budget, config.memory_headroom)
  est = estimator or Estimator(config, mesh, spec, target=target)
  usable, notes, compiles_before = budget.usable, [], est.compiles
  if est.cap < est.unit:
    raise ConfigError("data.n_train", est.spec.n_train,
                      f"at least {est.unit} training examples (one per device)")
  fixed = est.with_reserve(est.data_bytes + est.state_bytes)
  if fixed > usable:
    reserve = (f", the CPU runtime reserve ({format_bytes(fixed - est.data_bytes - est.state_bytes)})"
               if est.cpu else "")
    raise ConfigError("memory_budget", budget.value, "a larger budget. Nothing fits: the "
                      f"parameters ({format_bytes(est.param_bytes)}), optimizer state "
                      f"({format_bytes(est.state_bytes - est.param_bytes)}), the dataset "
                      f"on every device ({format_bytes(est.data_bytes)}){reserve} alone need "
                      f"{format_bytes(fixed)} per device, and {format_bytes(usable)} is usable")
  if est.with_reserve(est.data_bytes + est.eval_bytes()) > usable:
    raise ConfigError("eval_batch_size", config.eval_batch_size,
                      f"smaller: the eval step at k={est.eval_k} needs "
                      f"{format_bytes(est.with_reserve(est.data_bytes + est.eval_bytes()))} per "
                      f"device, and {format_bytes(usable)} is usable")
  if est.total(est.unit) > usable:
    raise ConfigError("memory_budget", budget.value,
                      f"a larger budget. Nothing fits: even k={est.unit} needs "
                      f"{format_bytes(est.total(est.unit))} per device, and "
                      f"{format_bytes(usable)} is usable")
  # Powers of two: each jump goes to the largest power the affine fit of the train
  # step's bytes predicts to fit; compiling it (and the next) certifies the answer.
  step_limit = est.without_reserve(usable) - est.data_bytes
  powers = powers_of_two(est.unit, est.cap)
  lo, hi = est.unit, None  # largest power known to fit, smallest known not to
  while lo < powers[-1] and (hi is None or hi > 2 * lo):
    points = [(k, c.total) for k, c in est.probes.items()]
    guess = _affine_guess(points, step_limit, 2 * est.state_bytes)
    ceiling = hi // 2 if hi is not None else powers[-1]
    candidate = max([p for p in powers if 2 * lo <= p <= min(guess, ceiling)], default=2 * lo)
    lo, hi = (candidate, hi) if est.total(candidate) <= usable else (lo, candidate)
  largest = None
  if exact:
    top = hi if hi is not None else est.cap
    fits_top = hi is None and est.total(top) <= usable
    largest = top if fits_top else _largest(est.total, usable, lo, top, est.unit)
  if (largest or lo) == est.cap or (hi is None and not exact):
    notes.append(f"candidates capped at the training set size ({est.spec.n_train}): "
                 f"k={largest or lo} fits and a larger k would exceed the dataset")
  trainer_bytes = None
  if check_trainer:
    # The trainer runs the step inside an epoch scan and evaluates in a scan: compile
    # those at the answer too, and move down to where they fit when they need more.
    chosen = largest or lo
    trainer_fits = lambda k: est.trainer_total(k) <= usable
    if not trainer_fits(chosen):
      notes.append(f"k={chosen}: the trainer's programs need "
                   f"{format_bytes(est.trainer_total(chosen))}, more than its train step; "
                   "moved down to where they fit")
      # The scans need a few percent more than the step: try 7/8 first, then halve.
      upper, chosen = chosen, chosen * 7 // 8 // est.unit * est.unit
      while chosen >= est.unit and not trainer_fits(chosen):
        upper, chosen = chosen, chosen // 2 // est.unit * est.unit
      if chosen < est.unit:
        raise ConfigError("memory_budget", budget.value, "a larger budget. Nothing fits: "
                          f"the trainer's programs need {format_bytes(est.trainer_total(upper))}"
                          f" at k={upper}")
      if exact:
        chosen = _largest(est.trainer_total, usable, chosen, upper, est.unit)
      largest = chosen if exact else None
      lo = max(p for p in powers if p <= chosen)
    trainer_bytes = est.trainer_total(chosen)
  points = sorted((k, c.total) for k, c in est.probes.items())
  slope = ((points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0]) * est.mesh.size
           if len(points) > 1 else 0.0)
  breakdown = est.breakdown(largest or lo)
  if trainer_bytes is not None and trainer_bytes > sum(breakdown.values()):
    breakdown["the trainer's epoch scan, beyond the train step"] = (
        trainer_bytes - sum(breakdown.values()))
  report = FitReport(
      config_name=config.name or config.model.name,
      input_shape=tuple(est.spec.input_shape), n_devices=mesh.size, target=est.target,
      budget=budget, largest_power_of_two=lo, largest_k=largest,
      probes={k: est.total(k) for k in sorted(est.probes)},
      breakdown=breakdown,
      layers=layer_table(est.program(est.unit).model, est.abstract_state.params,
                         est.spec.input_shape),
      eval_batch_size=est.eval_k, trainer_bytes=trainer_bytes, notes=notes,
      search_seconds=time.perf_counter() - t0, compiles=est.compiles - compiles_before,
      slope_bytes_per_example=slope)
  return report


def _largest(total: Callable[[int], int], limit: int, lo: int, hi: int, unit: int) -> int:
  """The largest multiple of unit with total(k) <= limit, given lo fits and hi does not."""
  interpolate = True
  while hi - lo > unit:
    width = hi - lo
    if interpolate:
      # Bytes are close to affine in k: the interpolated k and its neighbour usually
      # settle it in two compiles.
      b_lo, b_hi = total(lo), total(hi)
      guess = lo + (limit - b_lo) * (hi - lo) / max(b_hi - b_lo, 1)
      candidate = min(max(int(guess) // unit * unit, lo + unit), hi - unit)
      ok = total(candidate) <= limit
      lo, hi = (candidate, hi) if ok else (lo, candidate)
      neighbour = candidate + unit if ok else candidate - unit
      if lo < neighbour < hi:
        lo, hi = (neighbour, hi) if total(neighbour) <= limit else (lo, neighbour)
      interpolate = hi - lo <= width // 2  # else bisect once: the worst case stays log
    else:
      candidate = (lo + hi) // 2 // unit * unit
      lo, hi = (candidate, hi) if total(candidate) <= limit else (lo, candidate)
      interpolate = True
  return lo


# -------------------------------------------------------------- image-size table


def with_image_size(config: ml_collections.ConfigDict, size: int) -> ml_collections.ConfigDict:
  """The config at size x size inputs: resized images, or a synthetic input of that side."""
  config = copy.deepcopy(config)
  if config.data.name == "synthetic":
    channels = tuple(config.data.synthetic_input_shape)[2:] or (1,)
    config.data.synthetic_input_shape = (size, size, *channels)
  else:
    config.data.image_size = size
  return config


def tradeoff(config: ml_collections.ConfigDict, sizes: Sequence[int], budget: Budget, *,
             mesh: Mesh | None = None, target: str | None = None,
             exact: bool = True) -> list[FitReport | ConfigError]:
  """find_batch_size at each image size: what resolution costs in batch size. A size
  where nothing fits is an answer too: its entry is the ConfigError saying why.
  """
  results = []
  for size in sizes:
    try:
      results.append(find_batch_size(with_image_size(config, size), budget, mesh=mesh,
                                     target=target, exact=exact))
    except ConfigError as e:
      results.append(e)
  return results


def tradeoff_table(sizes: Sequence[int], results: Sequence[FitReport | ConfigError]) -> str:
  header = (f"{'image':>6} {'params':>12} {'largest 2^j':>11} {'largest k':>9} "
            f"{'bytes at k':>12} {'bytes/example':>13}")
  rows = [header, "-" * len(header)]
  for size, r in zip(sizes, results):
    if isinstance(r, ConfigError):
      rows.append(f"{size:>6} nothing fits: {r.field} must be {r.valid}")
      continue
    rows.append(f"{size:>6} {sum(l.params for l in r.layers):>12,} "
                f"{r.largest_power_of_two:>11} {str(r.largest_k or '-'):>9} "
                f"{format_bytes(sum(r.breakdown.values())):>12} "
                f"{format_bytes(r.slope_bytes_per_example):>13}")
  return "\n".join(rows)


def bytes_vs_k_figure(reports: Sequence[FitReport], path: str | os.PathLike | None = None):
  """Per-device bytes of every compiled k, one line per input size, with the budget."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 3.8))
  reports = [r for r in reports if isinstance(r, FitReport)]
  for i, r in enumerate(reports):
    ks, bs = zip(*sorted(r.probes.items()))
    ax.plot(ks, np.array(bs) / 2**30, "-o", ms=3, color=f"C{i}",
            label=f"{'x'.join(map(str, r.input_shape))}: k={r.chosen}")
  budget = reports[0].budget
  ax.axhline(budget.bytes / 2**30, color="k", ls="--", lw=1, label="budget")
  ax.axhline(budget.usable / 2**30, color="k", lw=1, label=f"usable ({budget.headroom:.0%} headroom)")
  ax.set(xscale="log", yscale="log", xlabel="global batch size k",
         ylabel="GiB per device", title="compiled train step: bytes vs k")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, frameon=False)
  fig.tight_layout()
  if path is not None:
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=150)
    os.replace(tmp, path)
  plt.close(fig)
  return fig


# -------------------------------------------------------------------- auto k


def resolve_auto_batch_size(config: ml_collections.ConfigDict, dataset: data.Dataset,
                            mesh: Mesh) -> ml_collections.ConfigDict:
  """batch_size="auto": the exact largest k that fits; logs the answer and breakdown."""
  budget = device_budget(mesh, config.memory_budget, config.memory_headroom)
  report = find_batch_size(config, budget, mesh=mesh, spec=dataset.spec())
  logging.info("batch_size=auto: k=%d (largest power of two: %d) in %.1fs\n%s",
               report.chosen, report.largest_power_of_two, report.search_seconds,
               report.table())
  return with_batch_size(config, report.chosen)
