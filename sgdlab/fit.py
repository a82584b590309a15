r"""The largest batch size that fits: compile the train step per k (or run trials).

  python -m sgdlab.fit --config=experiments/fit_batch_size.py --memory_budget=8GiB
  python -m sgdlab.fit --config=experiments/fit_batch_size.py --memory_budget=8GiB \
      --image_sizes=28,112
  python -m sgdlab.fit --config=experiments/fit_batch_size.py --memory_budget=3GiB \
      --method=trial

Prints a table and writes fit.json and fit.png (per-device bytes vs k for each image
size, with the budget) into --workdir. Without --memory_budget the budget is this
device's free memory (sgdlab.memory.device_budget). Bad input prints one line and
exits with code 2, writing nothing.
"""

from __future__ import annotations

import os
import time

from absl import app, flags
from ml_collections import config_flags

from sgdlab import config as config_lib
from sgdlab import data, launch, memory, step, store, trials
from sgdlab.errors import ConfigError

# --config and --workdir are shared with sgdlab.launch, which defines them.
_BUDGET = flags.DEFINE_string("memory_budget", None,
                              "Per-device budget, e.g. 8GiB, 512MiB, 16GB or bytes; default "
                              "config.memory_budget, and '' = this device's free memory.")
_HEADROOM = flags.DEFINE_float("headroom", None,
                               "Fraction of the budget kept free; default config.memory_headroom.")
_METHOD = flags.DEFINE_enum("method", "compile", ["compile", "trial"],
                            "compile: compile the step per k; trial: run real steps per k.")
_SIZES = flags.DEFINE_string("image_sizes", "", "Comma-separated image sides, e.g. 28,56,112.")
_TARGET = flags.DEFINE_enum("target", "", ["", "cpu", "accelerator"],
                            "Runtime terms to add (CPU conv buffers and reserve); default: "
                            "this machine's platform.")
_EXACT = flags.DEFINE_bool("exact", True, "Also find the exact largest k, not just 2^j.")
_TRIAL_START = flags.DEFINE_integer("trial_start", trials.TRIAL_START, "First k in trial mode.")
_TRIAL_STEPS = flags.DEFINE_integer("trial_steps", trials.TRIAL_STEPS,
                                    "Train steps per trial (then one evaluation); 0 = an epoch.")


def parse_sizes(text: str) -> list[int]:
  try:
    sizes = [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    sizes = [0]
  if not sizes or min(sizes) < 1:
    raise ConfigError("image_sizes", text, "comma-separated positive integers, e.g. 28,56,112")
  return sizes


def check_writable(workdir: str) -> None:
  """Fail before the search, and without creating anything, if results cannot be written."""
  path = os.path.abspath(workdir)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  if not os.path.isdir(path) or not os.access(path, os.W_OK):
    raise ConfigError("workdir", workdir, f"a writable folder ({path} is not)")


def run(config, workdir: str) -> str:
  """Validate, search, then write fit.json and fit.png; returns the printed text."""
  config_lib.validate(config)
  budget_text = config.memory_budget if _BUDGET.value is None else _BUDGET.value
  headroom = config.memory_headroom if _HEADROOM.value is None else _HEADROOM.value
  sizes = parse_sizes(_SIZES.value) if _SIZES.value else []
  if _TRIAL_STEPS.value < 0:
    raise ConfigError("trial_steps", _TRIAL_STEPS.value, "a count >= 0 (0: a whole epoch)")
  configs = [memory.with_image_size(config, s) for s in sizes] or [config]
  for c in configs:
    data.describe(c.data)  # validates each size before anything compiles
  if budget_text:
    memory.parse_bytes(budget_text)  # before jax starts: a typo costs nothing
  check_writable(workdir)
  mesh = step.make_mesh()
  budget = memory.device_budget(mesh, budget_text, headroom)
  result = dict(method=_METHOD.value, config=config_lib.to_dict(config), image_sizes=sizes)
  if _METHOD.value == "compile" and not sizes:
    reports = [memory.find_batch_size(config, budget, mesh=mesh, target=_TARGET.value or None,
                                      exact=_EXACT.value)]
    text = reports[0].table()
    result["reports"] = [reports[0].to_dict()]
  elif _METHOD.value == "compile":
    results = memory.tradeoff(config, sizes, budget, mesh=mesh, target=_TARGET.value or None,
                              exact=_EXACT.value)
    reports = [r for r in results if isinstance(r, memory.FitReport)]
    if not reports:
      raise results[0]
    text = "\n\n".join(f"image size {s}:\n{r.table()}" for s, r in zip(sizes, results)
                       if isinstance(r, memory.FitReport))
    text += "\n\n" + memory.tradeoff_table(sizes, results)
    result["reports"] = [dict(r.to_dict(), image_size=s) if isinstance(r, memory.FitReport)
                         else dict(image_size=s, error=str(r)) for s, r in zip(sizes, results)]
  else:
    on_cpu = mesh.devices.flat[0].platform == "cpu"
    searches = []
    for c in configs:
      report = trials.trial_search(c, n_devices=mesh.size, start=_TRIAL_START.value,
                                   steps=_TRIAL_STEPS.value or None,
                                   budget_bytes=budget.bytes * mesh.size if on_cpu else None)
      if not on_cpu:
        report.notes.append("off CPU the trials run against the device's own memory")
      searches.append((c, report))
    text = "\n\n".join(f"input {data.describe(c.data).input_shape}: {r.table()}"
                       for c, r in searches)
    result["trials"] = [r.to_dict() for _, r in searches]
    reports = []
  result.update(budget=dict(bytes=budget.bytes, headroom=budget.headroom,
                            usable=budget.usable, source=budget.source),
                text=text, written=time.strftime("%Y-%m-%d %H:%M:%S"))
  os.makedirs(workdir, exist_ok=True)
  store.write_json(os.path.join(workdir, "fit.json"), result)
  if reports:
    memory.bytes_vs_k_figure(reports, os.path.join(workdir, "fit.png"))
  return text


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    launch.fail(f"unexpected arguments {argv[1:]}")
  config = flags.FLAGS.config
  if config is None:
    launch.fail("--config is required, e.g. --config=experiments/fit_batch_size.py")
  workdir = flags.FLAGS.workdir or launch.default_workdir(
      config_flags.get_config_filename(flags.FLAGS["config"]))
  try:
    text = run(config, workdir)
  except ConfigError as e:
    launch.fail(str(e))
  print(text)
  print(f"\nwritten: {os.path.join(workdir, 'fit.json')}")


if __name__ == "__main__":
  app.run(main, flags_parser=launch.parse_flags)
