"""Results: what a run leaves behind and how it is read.

  history.py        a run's per-epoch and per-step curves (History)
  files.py          the results folder's files, written atomically; statuses
  writer.py         the one writer of a run's folder (the loop's on_epoch and finisher)
  tensorboard.py    TensorBoard events as a run trains
  diagnostics.py    epoch figures from step figures; plain-language findings
  summary.py        an experiment's table (over seeds: rates with intervals, medians) and figures
  seed_stats.py     Wilson intervals, medians and quartiles of the seeds that trained
  figures.py, sweep_figures.py, noise_figures.py, budget_figures.py,
  curvature_figures.py   figures for papers
"""
