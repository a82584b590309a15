r"""Which batch size fits: the largest k (compiling the step per k, or trials), or, for
a fixed k, the plan (micro-batch, remat, dtype) that runs it fastest within the budget.

  python -m sgdlab.fit --config=experiments/fit_batch_size.py --memory_budget=8GiB
  python -m sgdlab.fit --config=experiments/fit_batch_size.py --memory_budget=8GiB \
      --image_sizes=28,112
  python -m sgdlab.fit --config=experiments/fit_batch_size.py --memory_budget=3GiB \
      --method=trial
  python -m sgdlab.fit --config=experiments/fit_batch_size.py --memory_budget=1GiB \
      --config.batch_size=8192 --config.microbatch_size=auto

Prints a table and writes fit.json and fit.png (per-device bytes vs k for each image
size, with the budget; for a fixed k, bytes of each plan by micro-batch) into --workdir. Without --memory_budget the budget is this
device's free memory (sgdlab.memory.budget). Bad input prints one line and exits with
code 2, writing nothing.
"""

from __future__ import annotations

import os

from absl import flags

from sgdlab import cli
from sgdlab.memory import trials
from sgdlab.studies import fit as fit_study_lib

cli.define_config_flags()
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


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  config, workdir = cli.config(), cli.workdir()
  options = fit_study_lib.FitOptions(
      memory_budget=_BUDGET.value, headroom=_HEADROOM.value, method=_METHOD.value,
      image_sizes=_SIZES.value, target=_TARGET.value, exact=_EXACT.value,
      trial_start=_TRIAL_START.value, trial_steps=_TRIAL_STEPS.value)
  print(cli.call(lambda: fit_study_lib.fit_study(config, workdir, options)))
  print(f"\nwritten: {os.path.join(workdir, 'fit.json')}")


if __name__ == "__main__":
  cli.main(main)
