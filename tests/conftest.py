"""Eight fake CPU devices for every test, set before anything imports jax.

Tests that mean one device say so with the `mesh1` fixture; data-parallel tests use
`mesh8`. Subprocess tests (launchers) set their own device count.

The suite compiles at XLA's backend optimization level 0, the code generator's level
(the memory estimator compiles so too; tests/memory checks the buffer analysis is the
same), since on 2 CPU cores most of a test's time is compiling tiny programs: level 0
halves it. Set `--xla_backend_optimization_level` in XLA_FLAGS to test at another level;
benchmarks and experiments run at XLA's default.
"""

import importlib.util
import os
import re
import subprocess
import sys

_LEVEL = re.compile(r"--xla_backend_optimization_level=\d+")
_OPT = "" if _LEVEL.search(os.environ.get("XLA_FLAGS", "")) else " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + _OPT +
                           " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

from sgdlab import config as config_lib  # noqa: E402
from sgdlab.train import step  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def experiment(name: str):
  """experiments/<name>.py loaded by path (it is not a package), writing no bytecode."""
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(REPO, "experiments", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  writes, sys.dont_write_bytecode = sys.dont_write_bytecode, True
  try:
    spec.loader.exec_module(module)
  finally:
    sys.dont_write_bytecode = writes
  return module


@pytest.fixture(scope="session")
def mesh1():
  return step.make_mesh(jax.devices()[:1])


@pytest.fixture(scope="session")
def mesh8():
  assert len(jax.devices()) >= 8, "conftest must set 8 fake CPU devices before jax starts"
  return step.make_mesh(jax.devices()[:8])


def subprocess_env(n_devices: int = 1) -> dict:
  """Environment for a child python: the repo importable, n fake CPU devices."""
  env = dict(os.environ)
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ["XLA_FLAGS"])
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n_devices}".strip()
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  return env


def at_default_codegen(request) -> bool:
  """For a bitwise claim that holds at XLA's default code generation (level 3), the one
  users run, and not at the suite's level 0. True: this process compiles at level 3, go
  on. False: the test has just passed in a child pytest at level 3 (seconds); stop.
  """
  if "--xla_backend_optimization_level=3" in os.environ["XLA_FLAGS"]:
    return True
  env = dict(os.environ, XLA_FLAGS=_LEVEL.sub("", os.environ["XLA_FLAGS"]).strip() +
             " --xla_backend_optimization_level=3")
  r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                      "-m", request.config.option.markexpr, request.node.nodeid],  # as chosen here
                     cwd=REPO, env=env, capture_output=True, text=True)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
  return False


def tiny_config(**overrides):
  """A run of seconds: 200 synthetic 8x8 examples, an MLP of 32, k=32, 3 epochs.

  Overrides by field name, dotted for nested ones: tiny_config(**{"model.name": "cnn"}).
  """
  c = config_lib.default_config()
  c.data.name = "synthetic"
  c.data.synthetic_n_train = 200
  c.data.synthetic_n_test = 64
  c.data.synthetic_input_shape = (8, 8, 1)
  c.model.hidden = (32,)
  c.batch_size = 32
  c.num_epochs = 3
  c.learning_rate = 0.5
  for key, value in overrides.items():
    config_lib.set_field(c, key, value)
  return c
