"""What the XLA:CPU runtime allocates beyond XLA's own buffer assignment.

Measured on the CPU runtime of jax 0.10 (tests/memory checks them against real
out-of-memory failures):
* a convolution may build a buffer outside XLA's buffers (an im2col patch buffer, a
  padded input copy, or operand copies for a weight gradient); the largest one counts,
  since they run one after another (`conv_workspace_bytes`);
* a reserve (CPU_RESERVE_BYTES plus CPU_RESERVE_FRACTION of the rest): compiled code,
  compile-time memory, staging copies. Thread stacks and malloc arenas are counted as
  used before the budget is measured (`sgdlab.memory.budget.warm_up`).
Accelerators count their conv workspaces inside XLA's temp.
"""

from __future__ import annotations

import math
import re

# What the CPU runtime maps beyond XLA's buffers and the conv patch buffers (compiled
# code, compile-time memory, allocator slack), as address space after `warm_up`:
# 50-160 MiB over 10 configurations (MLP and CNN, k=64..8192, 0.3-6 GiB), measured as
# the smallest RLIMIT_AS under which real steps ran. Reserved: 160 MiB plus 5% of the
# modeled bytes. tests/memory/test_memory.py checks it against real out-of-memory failures.
CPU_RESERVE_BYTES = 192 << 20
CPU_RESERVE_FRACTION = 0.05

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
  * wider: the larger of that and the input padded to the window's reach (which one
    the runtime builds differs between CPUs).
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
    else:
      rows = math.prod(out_dims) // max(out_dims[out_labels.index("f")], 1)
      need = rows * math.prod(size) * rhs[rhs_labels.index("i")] * itemsize  # im2col
      if rhs[rhs_labels.index("i")] > IM2COL_MAX_CHANNELS:
        # Which buffer a wide convolution takes depends on the CPU: a padded input
        # copy on the AMD EPYC, the im2col buffer on the AVX-512 Xeon (32 -> 64 at
        # k=1024: ~650 MiB, 64 -> 32 at 28x28: 1.6 GiB). Count the larger.
        stride = _window(m.group(4), "stride", len(spatial), 1)
        reach = [(out_dims[out_labels.index(c)] - 1) * st + sz
                 for c, st, sz in zip(spatial, stride, size)]
        need = max(need, lhs[lhs_labels.index("b")] * math.prod(reach) *
                   lhs[lhs_labels.index("f")] * itemsize)
    largest = max(largest, need)
  return largest

