"""What the memory tests share: small configs and budgets, the fit launcher, and real
out-of-memory on CPU (children under an address-space limit, and configs whose bytes
grow fast enough with k for a budget to separate one k from the next).

A budget B means: B bytes of address space beyond what the process maps after
importing jax, loading the data and starting the runtime's threads. Trial children
set RLIMIT_AS to exactly that (sgdlab.trials.run_trial); the trainer child below
sets it and lets the "auto" fields measure the budget themselves.
"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, subprocess_env
from sgdlab import config as config_lib
from sgdlab.memory import budget as budget_lib

GiB, MiB = 1 << 30, 1 << 20


def tiny(model: str = "cnn", side: int = 16, n_train: int = 1024) -> config_lib.ml_collections.ConfigDict:
  c = config_lib.default_config()
  c.model.name = model
  c.model.hidden = (32,)
  c.model.features = (4, 8)
  c.model.dense = 16
  c.data.name = "synthetic"
  c.data.synthetic_input_shape = (side, side, 1)
  c.data.synthetic_n_train = n_train
  c.data.synthetic_n_test = 128
  c.eval_batch_size = 128
  c.num_epochs = 1
  return c


def budget(n: int, headroom: float = 0.1) -> budget_lib.Budget:
  return budget_lib.Budget(n, headroom, f"{n} bytes", given=str(n))


def fit_cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
  """`python -m sgdlab.fit` on a small CNN config written to tmp_path."""
  cfg = tmp_path / "tiny_config.py"
  cfg.write_text(
      "from sgdlab.config import default_config\n"
      "def get_config():\n"
      "  c = default_config()\n"
      "  c.model.name = 'cnn'; c.model.features = (4, 8); c.model.dense = 16\n"
      "  c.data.name = 'synthetic'; c.data.synthetic_input_shape = (16, 16, 1)\n"
      "  c.data.synthetic_n_train = 512; c.data.synthetic_n_test = 128\n"
      "  c.eval_batch_size = 128\n"
      "  return c\n")
  return subprocess.run([sys.executable, "-m", "sgdlab.fit", f"--config={cfg}", *args],
                        capture_output=True, text=True, env=subprocess_env(1), cwd=REPO,
                        timeout=600)


_TRAIN_UNDER_LIMIT = r"""
import json, resource, sys
import jax
from sgdlab import config as config_lib, data
from sgdlab.memory import budget
from sgdlab import trainer
from sgdlab.train import step
payload = json.loads(sys.argv[1])
config = config_lib.from_dict(payload["config"])
dataset = data.load(config.data)
mesh = step.make_mesh(jax.devices()[:1])
budget.warm_up(mesh)
limit = budget.address_space_bytes() + payload["budget_bytes"]
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
for key, value in payload["fields"].items():
  config_lib.set_field(config, key, value)
config.memory_budget = ""
history = trainer.train(config, dataset=dataset, mesh=mesh)
print("RESULT " + json.dumps(dict(config=history.config, epochs=history.num_epochs,
                                  acc=history.epochs["test_accuracy"][-1])), flush=True)
"""


def train_under_limit(config, budget_bytes: int, **fields) -> dict:
  """The real trainer in a child under an address-space limit, with its config's
  memory_budget "" (the budget is what the limit leaves) and `fields` set (e.g.
  batch_size="auto")."""
  r = subprocess.run([sys.executable, "-c", _TRAIN_UNDER_LIMIT,
                      json.dumps(dict(config=config_lib.to_dict(config),
                                      budget_bytes=budget_bytes, fields=fields))],
                     capture_output=True, text=True, env=subprocess_env(1), cwd=REPO,
                     timeout=900)
  lines = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
  assert r.returncode == 0 and lines, (r.returncode, r.stderr[-3000:])
  return json.loads(lines[0][len("RESULT "):])


def oom_config(model: str) -> config_lib.ml_collections.ConfigDict:
  """Bytes that grow fast with k at little compute: a wide hidden layer on 4x4 inputs,
  or a CNN whose convolutions all take the CPU runtime's im2col path (4 -> 4 channels;
  the runtime skips it for some shapes, e.g. 8 -> 4, where compile mode is cautious).
  """
  if model == "mlp":
    config = tiny("mlp", side=4, n_train=16384)
    config.model.hidden = (16384,)
    return config
  config = tiny("cnn", side=32, n_train=16384)
  config.model.features = (4, 4)
  return config
