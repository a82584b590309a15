r"""Run an experiment: every point of its sweep, then its summary table and figure.

  python -m sgdlab.launch --config=experiments/classic_batch_size.py --workdir=runs/classic
  python -m sgdlab.launch --config=experiments/classic_batch_size.py \
      --config.num_epochs=3 --config.sweep.points="({'batch_size': 64},)"

Everything is validated before anything is written or compiled: a bad value prints one
line naming the field and exits with code 2. A point that diverges or crashes is
recorded in its folder and the others still run.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from sgdlab import config as config_lib
from sgdlab import data, step, store, summary, sweep
from sgdlab.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "", "Results folder; default runs/<config file name>.")

USAGE_ERROR = 2


def fail(message: str) -> None:
  """One line on stderr and exit code 2: the contract for bad input."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(USAGE_ERROR)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a bad flag or config override is a one-line usage error."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError, OSError) as e:
    cause = e.__cause__ or e.__context__ or e
    text = str(cause).strip().splitlines()[-1] if str(cause).strip() else repr(cause)
    fail(f"{text}")
  return []


def default_workdir(config_path: str) -> str:
  name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  return os.path.join("runs", name or "experiment")


def plan(config) -> list[sweep.Point]:
  """Expand and validate every point up front (cheap: reads dataset headers only)."""
  points = sweep.expand(config)
  n_devices = step.make_mesh().size
  for point in points:
    config_lib.validate(point.config)
    if point.config.batch_size != "auto":
      spec = data.describe(point.config.data)
      config_lib.validate(point.config, n_devices=n_devices, n_train=spec.n_train)
  return points


def prepare_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write-test-{os.getpid()}")
    with open(probe, "w"):
      pass
    os.unlink(probe)
  except OSError as e:
    raise ConfigError("workdir", workdir, f"a writable folder ({e.strerror})") from e


def run(config, workdir: str) -> int:
  """Run all points not already done; returns the number that failed."""
  from sgdlab import trainer  # jax compiles only once the plan is valid
  points = plan(config)
  prepare_workdir(workdir)
  histories, failed = [], []
  datasets = {}
  t0 = time.perf_counter()
  for i, point in enumerate(points):
    point_dir = os.path.join(workdir, point.id)
    name = config_lib.run_name(point.config)
    state = store.status(point_dir)["status"]
    if state in ("done", "diverged"):
      logging.info("point %d/%d %s: already %s, skipped", i + 1, len(points), point.id, state)
      histories.append(store.load_history(point_dir))
      continue
    logging.info("point %d/%d %s (%s)", i + 1, len(points), point.id, name)
    os.makedirs(point_dir, exist_ok=True)
    store.write_json(os.path.join(point_dir, "config.json"), config_lib.to_dict(point.config))
    store.set_status(point_dir, "running")
    try:
      key = repr(point.config.data.to_dict())
      if key not in datasets:
        datasets = {key: data.load(point.config.data)}  # keep one dataset in memory
      history = trainer.train(point.config, dataset=datasets[key])
      store.save_run(point_dir, history)
      histories.append(history)
    except Exception as e:  # a crashing point must not end the sweep
      logging.exception("point %s failed", point.id)
      store.set_status(point_dir, "failed", error=f"{type(e).__name__}: {e}")
      failed.append((name, f"{type(e).__name__}: {e}"))
    elapsed = time.perf_counter() - t0
    logging.info("point %d/%d done; %.0fs elapsed", i + 1, len(points), elapsed)
  text = summary.write(workdir, histories, failed, title=os.path.basename(workdir.rstrip("/")))
  print(text)
  logging.info("summary: %s", os.path.join(workdir, "summary.md"))
  return len(failed)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}; use --config.field=value")
  if _CONFIG.value is None:
    fail("--config is required, e.g. --config=experiments/classic_batch_size.py")
  workdir = _WORKDIR.value or default_workdir(config_flags.get_config_filename(flags.FLAGS["config"]))
  try:
    failures = run(_CONFIG.value, workdir)
  except ConfigError as e:
    fail(str(e))
  sys.exit(1 if failures else 0)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
