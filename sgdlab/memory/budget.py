"""The per-device memory budget: explicit, or what this device (or process) may still use."""

from __future__ import annotations

import dataclasses
import resource

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sgdlab.errors import ConfigError
from sgdlab.units import parse_bytes

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

