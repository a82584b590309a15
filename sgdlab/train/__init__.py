"""Training: the one train step, the Run that compiles it, and the one loop.

  step.py        the data-parallel train step and eval step (shard_map, pmean)
  program.py     Program: the step's compiled pieces for 1..P members
  run.py         Run: a Program with its data placed or streamed, its per-epoch order
  loop.py        epochs -> Histories, calling small per-epoch pieces (sgdlab.train.pieces)
  checkpoint.py  orbax checkpoints of the state and the histories (bitwise resume)

`sgdlab.trainer` (one floor up) decides the "auto" fields and loads the data once, then
drives these.
"""
