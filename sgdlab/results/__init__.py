"""Results: what a run leaves behind and how it is read.

  history.py        a run's per-epoch and per-step curves (History)
  diagnostics.py    epoch figures from step figures; plain-language findings
  summary.py        an experiment's table (mean and range over seeds) and figures
  figures.py, sweep_figures.py, noise_figures.py   figures for papers
"""
