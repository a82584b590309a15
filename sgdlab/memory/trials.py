"""Trial mode: the manual batch-size search, for comparison with compile mode.

Start at k=512; on an out-of-memory error halve, and while the step runs double (PyTorch
Lightning's power mode). Each trial runs in a fresh child process, so a failed trial
frees everything: a few real steps of the trainer's compiled epoch scan, then its
evaluation. On CPU the child limits its own address space (RLIMIT_AS), the CPU's one
hard out-of-memory boundary, to the budget beyond what it maps at start-up, and never
above a hard limit it inherited (`ulimit -v`, `prlimit --as`, batch schedulers).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import resource
import subprocess
import sys
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from sgdlab import config as config_lib
from sgdlab.errors import ConfigError
from sgdlab.memory import budget as budget_lib
from sgdlab.memory.search import powers_of_two

TRIAL_START = 512
TRIAL_STEPS = 3  # per trial, as PyTorch Lightning's batch-size finder (steps_per_trial)


_OOM_PATTERNS = re.compile(
    r"RESOURCE_EXHAUSTED|out of memory|bad_alloc|MemoryError|Cannot allocate memory|"
    r"failed to allocate|INTERNAL.*operation failed|failed to map segment|"
    r"error return without exception set", re.IGNORECASE)


def is_oom(text: str) -> bool:
  """Whether an error text is an allocation failure (XLA, allocator, Python, loader)."""
  return bool(_OOM_PATTERNS.search(text or ""))


@dataclasses.dataclass(frozen=True)
class Trial:
  k: int
  ok: bool
  oom: bool
  seconds: float
  error: str = ""
  peak_bytes: int = 0  # the child's address-space growth after the budget was set (CPU)
  startup_seconds: float = 0.0  # importing jax, loading the data, starting the runtime


@dataclasses.dataclass
class TrialReport:
  largest_power_of_two: int | None
  trials: list[Trial]
  seconds: float
  notes: list[str]

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def table(self) -> str:
    lines = [f"trial mode: largest power of two that ran: k={self.largest_power_of_two} "
             f"[{len(self.trials)} trials, {self.seconds:.1f}s]", "",
             f"{'k':>8}  {'result':<8} {'seconds':>8}  error"]
    for t in self.trials:
      result = "ran" if t.ok else ("OOM" if t.oom else "error")
      lines.append(f"{t.k:>8}  {result:<8} {t.seconds:>8.1f}  {t.error[:100]}")
    lines += [f"note: {n}" for n in self.notes]
    return "\n".join(lines)


_CHILD_MAIN = ("import sys; from sgdlab.memory import trials; "
               "trials._trial_child(sys.stdin.read())")


def run_trial(config: ml_collections.ConfigDict, k: int, *, n_devices: int = 1,
              budget_bytes: int | None = None, steps: int | None = TRIAL_STEPS,
              timeout: float | None = None) -> Trial:
  """Run the trainer's compiled programs at k in a fresh child (so a failed trial frees
  everything): `steps` steps of its epoch scan (None: the whole epoch), then its
  evaluation over the test set.

  budget_bytes (CPU): the child limits its address space (RLIMIT_AS) to what it has
  mapped after importing jax and loading the data, plus this: a real out-of-memory
  boundary at the same point where compile mode measures what is used.
  """
  payload = json.dumps(dict(config=config_lib.to_dict(config), k=int(k), steps=steps,
                            n_devices=n_devices, budget_bytes=budget_bytes))
  env = dict(os.environ)
  if jax.default_backend() == "cpu":
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n_devices}".strip()
    env.setdefault("JAX_PLATFORMS", "cpu")
  t0 = time.perf_counter()
  try:
    proc = subprocess.run([sys.executable, "-c", _CHILD_MAIN], input=payload, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return Trial(k, False, False, time.perf_counter() - t0, f"timed out after {timeout}s")
  seconds = time.perf_counter() - t0
  result = next((json.loads(line[len("TRIAL "):]) for line in proc.stdout.splitlines()
                 if line.startswith("TRIAL ")), None)
  if result is not None and result["ok"]:
    return Trial(k, True, False, seconds, peak_bytes=result["peak_bytes"],
                 startup_seconds=result["startup_seconds"])
  error = result["error"] if result else (proc.stderr.strip().splitlines() or [""])[-1]
  if proc.returncode < 0:
    error = f"killed by signal {-proc.returncode}; {error}"
  oom = proc.returncode < 0 or is_oom(error) or is_oom(proc.stderr[-4000:])
  return Trial(k, False, oom, seconds, error[:500])


def _trial_child(payload_text: str) -> None:
  """The child of run_trial: prints one 'TRIAL {json}' line, whatever happens."""
  payload = json.loads(payload_text)
  out: dict[str, Any] = dict(ok=False, error="", peak_bytes=0, startup_seconds=0.0)
  t0 = time.perf_counter()
  try:
    from sgdlab import data  # pylint: disable=g-import-not-at-top
    from sgdlab.train import loop, run, step  # pylint: disable=g-import-not-at-top
    config = config_lib.from_dict(payload["config"])
    config.batch_size = payload["k"]
    mesh = step.make_mesh(jax.devices()[:payload["n_devices"]])
    resolved = config_lib.resolve(config, n_devices=mesh.size)
    dataset = data.load(resolved.config.data)
    budget_lib.warm_up(mesh)
    base = budget_lib.address_space_bytes()
    out["startup_seconds"] = time.perf_counter() - t0
    if payload["budget_bytes"]:
      limit_address_space(base + payload["budget_bytes"])
    # What the trainer runs, and what compile mode promises: the Run's advance program
    # for the first `steps` steps (the same buffers, a shorter loop), then its
    # evaluation, through the one training loop.
    trial_run = run.create_run(resolved, dataset, mesh, compile_now=False)
    steps = payload["steps"] or trial_run.program.steps_per_epoch
    histories = loop.run_loop(trial_run, max_steps=steps)
    jax.block_until_ready(histories[0].state.params)
    out.update(ok=True, peak_bytes=budget_lib.address_space_bytes("VmPeak") - base)
  except BaseException as e:  # pylint: disable=broad-except
    out["error"] = f"{type(e).__name__}: {str(e).strip()[:800]}"
  print("TRIAL " + json.dumps(out), flush=True)
  sys.stdout.flush()
  os._exit(0)  # skip teardown: a process near its memory limit can fail while exiting


def limit_address_space(limit: int) -> int:
  """Set RLIMIT_AS's soft limit to `limit`, or to the inherited hard limit if lower (a
  process cannot raise its soft limit above its hard one); returns the limit set."""
  soft, hard = resource.getrlimit(resource.RLIMIT_AS)
  if hard != resource.RLIM_INFINITY:
    limit = min(limit, hard)
  resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
  return limit


def trial_search(config: ml_collections.ConfigDict | config_lib.Resolved, *, n_devices: int = 1,
                 budget_bytes: int | None = None, start: int = TRIAL_START,
                 steps: int | None = TRIAL_STEPS, timeout: float | None = None,
                 n_train: int | None = None) -> TrialReport:
  """The manual procedure: start at `start`; halve on OOM until one runs, or double
  while it runs (PyTorch Lightning's power mode); each trial runs `steps` steps of the
  trainer's programs in a fresh child (`run_trial`). Candidates are the device count times powers of two,
  capped at the training set size.
  """
  t0 = time.perf_counter()
  if not isinstance(config, config_lib.Resolved):
    config = config_lib.resolve(config, n_devices=n_devices)
  n_train = config.spec.n_train if n_train is None else n_train
  unit, config = config.batch_unit, config.config
  powers = powers_of_two(unit, n_train // unit * unit)
  notes = []
  if not powers:
    raise ConfigError("data.n_train", n_train, f"at least {unit} training examples")
  k = max([p for p in powers if p <= max(start, unit)], default=unit)
  if k < start:
    notes.append(f"start {start} capped at {k} (device count x power of two, at most the "
                 f"training set size {n_train})")
  trials: list[Trial] = []

  def run(k: int) -> Trial:
    trial = run_trial(config, k, n_devices=n_devices, budget_bytes=budget_bytes,
                      steps=steps, timeout=timeout)
    logging.info("trial k=%d: %s in %.1fs %s", k, "ran" if trial.ok else
                 ("OOM" if trial.oom else "error"), trial.seconds, trial.error[:200])
    trials.append(trial)
    if not trial.ok and not trial.oom:
      raise RuntimeError(f"trial k={k} failed without running out of memory: {trial.error}")
    return trial

  first = run(k)
  best = None
  if first.ok:
    best = k
    while 2 * best <= powers[-1]:
      trial = run(2 * best)
      if not trial.ok:
        break
      best = trial.k
    if 2 * best > powers[-1]:
      notes.append(f"capped at the training set size {n_train}")
  else:
    while k > unit:
      k //= 2
      trial = run(k)
      if trial.ok:
        best = k
        break
  return TrialReport(best, trials, time.perf_counter() - t0, notes)
