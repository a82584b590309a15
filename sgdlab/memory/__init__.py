"""Which batch size fits: compile the train step per candidate k instead of crashing.

  budget.py       the per-device budget (explicit, device stats, or host limits)
  cpu_runtime.py  what XLA:CPU allocates beyond XLA's buffers
  estimator.py    per-device bytes of the trainer's compiled programs at any k
  search.py       the largest power of two and the exact largest k; image-size trade-off
  plan.py         the fixed-k micro-batch planner (accumulation, remat, dtype)
  auto.py         batch_size, microbatch_size and dtype "auto"
  trials.py       the manual procedure (run, halve on OOM, double), for comparison

The fit study that writes fit.json and fit.png is `sgdlab.studies.fit`.
"""
