"""Sweeps: an experiment's points, who runs them, and where their results go.

  expand.py    a config's sweep section -> points with stable ids
  groups.py    which points train together as one population
  runner.py    resolve_points (validate everything, decide auto k), then run_sweep: this
               worker's share, each point's folder written by sgdlab.results.writer
  claims.py    claim files: no point runs twice at once
  workers.py   worker index and count (flags, SLURM arrays, Kubernetes indexed jobs)
  hosts.py     one run across several processes (jax.distributed)
  submit.py    the sweep as a SLURM (or local) job array through submitit
  progress.py  points left and the ETA (tqdm)
"""
