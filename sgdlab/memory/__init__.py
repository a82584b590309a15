"""Which batch size fits: compile the train step per candidate k instead of crashing.

  units.py        8GiB <-> bytes
  budget.py       the per-device budget (explicit, device stats, or host limits)
  cpu_runtime.py  what XLA:CPU allocates beyond XLA's buffers
  estimator.py    per-device bytes of the trainer's compiled programs at any k
  search.py       the largest power of two and the exact largest k; image-size trade-off
  auto.py         batch_size="auto"
  trials.py       the manual procedure (run, halve on OOM, double), for comparison
"""
