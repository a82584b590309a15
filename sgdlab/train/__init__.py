"""Training: the one train step, the Run that compiles it, and the one loop.

  step.py        the data-parallel train step and eval step (shard_map, pmean)
  run.py         Program (compiled pieces, 1..P members) and Run (placed data)
  loop.py        epochs -> Histories: divergence, noise EMA, evaluations, checkpoints
  checkpoint.py  orbax checkpoints of the state and the histories (bitwise resume)
  api.py         train(config), train_population(configs)
"""
