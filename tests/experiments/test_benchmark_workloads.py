"""The ResNet and Transformer throughput benchmark on tiny sizes.

No speed is asserted (the script reports it). What is checked: both loops time every
epoch, and they train alike, so that the comparison is like for like: from the same
initial state on the same batches, one warm-up epoch gives nearly the same loss,
parameters and (for the ResNet, through the test loss) batch norm running averages.
"""

import numpy as np
import pytest

from sgdlab.studies import bench as harness
from sgdlab.studies import corpus
from sgdlab.studies import workloads as bench


@pytest.mark.slow  # compiles: about 60 s for the ResNet, 30 s for the Transformer (2 cores)
@pytest.mark.parametrize("workload", ["resnet", "transformer"])
def test_both_loops_report_throughput_and_train_alike(tmp_path, mesh1, workload):
  n_train, k = 32, 8
  if workload == "resnet":
    sizes = dict(width=4, side=8, n_test=32)
  else:
    path = corpus.write_python_docs(str(tmp_path), bench.corpus_bytes(n_train, 16, 0.2))
    sizes = dict(width=16, depth=1, heads=2, seq_len=16, corpus_path=path)
  (r,) = bench.benchmark(workload, [k], epochs=1, mesh=mesh1, n_train=n_train, **sizes)
  assert (r.workload, r.k, r.steps) == (workload, k, n_train // k)
  for name in (harness.SGDLAB, bench.HAND):
    assert len(r.times[name]) == 1
    median, low, high = r.examples_per_sec(name)
    assert 0 < low <= median <= high
    assert np.isfinite(r.warmup_loss[name]) and np.isfinite(r.test_loss[name])
  np.testing.assert_allclose(r.warmup_loss[bench.HAND], r.warmup_loss[harness.SGDLAB],
                             rtol=1e-3)
  np.testing.assert_allclose(r.test_loss[bench.HAND], r.test_loss[harness.SGDLAB], rtol=1e-3)
  assert r.param_diff < 1e-4 and r.ratio > 0
  table = bench.format_table([r])
  assert table.splitlines()[2].startswith(f"| {workload} | {k} | {n_train // k} |")
