"""Eight fake CPU devices for every test, set before anything imports jax.

Tests that mean one device say so with the `mesh1` fixture; data-parallel tests use
`mesh8`. Subprocess tests (launchers) set their own device count.
"""

import importlib.util
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
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
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  return env


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
