"""Sweeps: worker shares, claims, concurrent workers, the summary, and every bad input."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from conftest import subprocess_env
from sgdlab.data import idx as idx_files
from sgdlab.errors import UsageError
from sgdlab.results import summary
from sgdlab.results import files
from sgdlab.sweep import claims, workers
from sgdlab.sweep import expand as sweep
from sgdlab.config import default_config
from sgdlab.results.history import History
from sgdlab.results.writer import Writer

# ---------------------------------------------------------------------------- shares


def grid_config():
  c = default_config()
  c.sweep.product.batch_size = (2048, 256, 32)
  c.sweep.product.learning_rate = (1.0, 0.1, 0.01)
  return c


def test_shares_are_disjoint_cover_the_grid_and_do_not_depend_on_the_worker():
  points = sweep.expand(grid_config())
  ids = [p.id for p in points]
  for n in (1, 2, 4, 9, 20):
    shares = [[p.id for p in sweep.share(points, w, n)] for w in range(n)]
    assert sorted(sum(shares, [])) == sorted(ids)
    assert len(set(sum(shares, []))) == len(ids)
    again = sweep.expand(grid_config())
    assert [[p.id for p in sweep.share(again, w, n)] for w in range(n)] == shares


def test_checkpoint_frequency_does_not_change_point_ids():
  a = grid_config()
  b = grid_config()
  b.checkpoint_every_epochs = 3
  assert [p.id for p in sweep.expand(a)] == [p.id for p in sweep.expand(b)]
  b.seed = 1
  assert not {p.id for p in sweep.expand(a)} & {p.id for p in sweep.expand(b)}


@pytest.mark.parametrize("index,count,env,expected", [
    (None, None, {}, (0, 1)),
    (2, 3, {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "5"}, (2, 3)),
    (None, None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}, (3, 4)),
    (None, None, {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4",
                  "SLURM_ARRAY_TASK_MIN": "1"}, (3, 4)),
    (None, None, {"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_COUNT": "4",
                  "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "2"}, (3, 4)),
    (None, 6, {"JOB_COMPLETION_INDEX": "5"}, (5, 6)),
])
def test_worker_from_flags_slurm_or_kubernetes(index, count, env, expected):
  w = workers.resolve_worker(index, count, env)
  assert (w.index, w.count) == expected


@pytest.mark.parametrize("index,count,env,message", [
    (2, 2, {}, "--worker_index=2 is invalid"),
    (0, 0, {}, "--num_workers=0 is invalid"),
    (1, None, {}, "--num_workers=<unset> is invalid"),
    (None, None, {"JOB_COMPLETION_INDEX": "1"}, "--num_workers=<unset> is invalid: required"),
    (None, None, {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"},
     "SLURM_ARRAY_TASK_ID='x' is invalid"),
    (None, None, {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4"},
     "SLURM_ARRAY_TASK_ID=4 is invalid"),
])
def test_bad_worker_settings_name_the_flag_or_variable(index, count, env, message):
  with pytest.raises(UsageError, match="^" + message.replace("[", r"\[")):
    workers.resolve_worker(index, count, env)


# ---------------------------------------------------------------------------- claims


def test_one_claim_wins_and_release_frees_the_point(tmp_path):
  workdir = str(tmp_path)
  results = []
  barrier = threading.Barrier(8)

  def contend(i):
    barrier.wait()
    results.append(claims.claim(workdir, "p1", claims.Owner(worker=f"{i}/8")))

  threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  won = [r for r in results if isinstance(r, claims.Claim)]
  assert len(won) == 1 and len(results) == 8
  assert all("heartbeat" in r.describe() for r in results if isinstance(r, claims.Holder))
  won[0].release()
  assert claims.holder(workdir, "p1") is None
  again = claims.claim(workdir, "p1", claims.Owner(worker="0/1"))
  assert isinstance(again, claims.Claim)
  again.release()


def test_claim_of_a_dead_process_is_taken_over_at_once(tmp_path):
  child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  dead = claims.Owner(worker="0/1", pid=child.pid)
  first = claims.claim(str(tmp_path), "p", dead, stale_after=3600)
  first._stop.set()  # its heartbeat would die with it
  assert isinstance(claims.claim(str(tmp_path), "p", claims.Owner(worker="1/2"),
                                stale_after=3600), claims.Holder)  # alive: held
  child.send_signal(signal.SIGKILL)
  child.wait()
  taken = claims.claim(str(tmp_path), "p", claims.Owner(worker="1/2"), stale_after=3600)
  assert isinstance(taken, claims.Claim) and taken.path.endswith(".1")
  taken.release()
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".claim-")]


def test_claim_from_another_host_goes_stale_without_heartbeat(tmp_path):
  other = claims.Owner(worker="0/2", host="elsewhere", pid=1)
  held = claims.claim(str(tmp_path), "p", other, stale_after=0.5)
  time.sleep(0.3)
  assert isinstance(claims.claim(str(tmp_path), "p", claims.Owner(worker="1/2"),
                                stale_after=0.5), claims.Holder)  # heartbeat keeps it
  held._stop.set()  # the other host is preempted: no more heartbeats
  time.sleep(0.8)
  taken = claims.claim(str(tmp_path), "p", claims.Owner(worker="1/2"), stale_after=0.5)
  assert isinstance(taken, claims.Claim)
  taken.release()


def test_config_difference_ignores_name_and_checkpointing_only():
  a = dict(learning_rate=1.0, name="x", checkpoint_every_epochs=0, model=dict(hidden=[8]))
  assert files.config_difference(a, dict(a, name="y", checkpoint_every_epochs=2)) is None
  assert "learning_rate" in files.config_difference(a, dict(a, learning_rate=0.5))
  assert "model.hidden" in files.config_difference(a, dict(a, model=dict(hidden=(9,))))
  assert files.config_difference(dict(a, batch_size=64), dict(a, batch_size="auto")) is None


# ---------------------------------------------------------------------------- summary


def fake_history(k, lr, accs, diverged=""):
  h = History(name=f"k={k} lr={lr:g}", config=dict(batch_size=k, learning_rate=lr,
                                                     lr_decay=1e-3, seed=0))
  n = len(accs)
  h.epochs = dict(epoch=list(range(1, n + 1)), train_loss=list(np.linspace(2, 1, n)),
                  train_accuracy=accs, test_loss=list(np.linspace(2, 1, n)),
                  test_accuracy=accs, wall_time=[1.0] * n, examples_per_sec=[10.0] * n)
  h.diverged = diverged
  return h


def test_summary_is_rebuilt_from_the_point_folders(tmp_path):
  workdir = str(tmp_path)
  runs = [fake_history(32, 1.0, [0.5, 0.6]), fake_history(256, 1.0, [0.3, 0.4]),
          fake_history(32, 0.1, [0.7, 0.8]), fake_history(256, 0.1, [0.1], diverged="d")]
  for i, h in enumerate(runs):
    writer = Writer([os.path.join(workdir, f"p{i}")], plot=False)
    writer.start([h.config])
    writer.finish([h])
  os.makedirs(os.path.join(workdir, "p9"))
  files.write_json(os.path.join(workdir, "p9", "config.json"), default_config().to_dict())
  files.set_status(os.path.join(workdir, "p9"), "failed", error="ValueError: boom")
  os.makedirs(os.path.join(workdir, "p8"))
  files.write_json(os.path.join(workdir, "p8", "config.json"), default_config().to_dict())
  found = summary.read_results(workdir)
  assert [h.name for h in found.histories] == ["k=256 lr=1", "k=256 lr=0.1", "k=32 lr=1",
                                               "k=32 lr=0.1"]
  r = subprocess.run([sys.executable, "-m", "sgdlab.report", f"--workdir={workdir}"],
                     capture_output=True, text=True, env=subprocess_env(1), timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  rows = [line.split(" | ")[0] for line in r.stdout.splitlines() if line.startswith("| k=")]
  assert rows == ["| k=256 lr=1", "| k=256 lr=0.1", "| k=32 lr=1", "| k=32 lr=0.1"]
  assert "FAILED: ValueError: boom" in r.stdout and "not finished (missing)" in r.stdout
  assert (tmp_path / "summary.md").read_text().endswith(r.stdout.rstrip("\n") + "\n")
  for name in ("overlay.png", "sweep.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 10_000
  r = subprocess.run([sys.executable, "-m", "sgdlab.report", f"--workdir={tmp_path / 'none'}"],
                     capture_output=True, text=True, env=subprocess_env(1), timeout=120)
  assert r.returncode == 2 and r.stderr.startswith("error: --workdir=")


# ---------------------------------------------------------------------------- launches

SWEEP = textwrap.dedent('''
    from sgdlab.config import default_config

    def get_config():
      c = default_config()
      c.data.name = "synthetic"
      c.data.synthetic_n_train = 96
      c.data.synthetic_n_test = 32
      c.data.synthetic_input_shape = (4, 4, 1)
      c.model.hidden = (8,)
      c.num_epochs = 2
      c.checkpoint_every_epochs = 1
      c.sweep.product.batch_size = (32, 16)
      c.sweep.product.learning_rate = (0.5, 0.05)
      return c
''')


def _config_file(tmp_path):
  path = tmp_path / "sweep.py"
  path.write_text(SWEEP)
  return path


def _start(tmp_path, workdir, *args, env=None):
  cmd = [sys.executable, "-m", "sgdlab.launch", f"--config={_config_file(tmp_path)}",
         f"--workdir={workdir}", *args]
  return subprocess.Popen(cmd, env={**subprocess_env(1), **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _trained(stderr):
  """Point ids a worker trained, from its 'point i/N (worker w/n) <id>: training' lines."""
  return [line.split(") ")[1].split(":")[0] for line in stderr.splitlines()
          if "point " in line and ": training " in line]


def test_two_concurrent_launches_of_one_sweep_run_each_point_exactly_once(tmp_path):
  """Two identical commands on one workdir (a resubmitted job): the claims split the work."""
  workdir = tmp_path / "runs"
  procs = [_start(tmp_path, workdir) for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
  trained = _trained(outs[0][1]) + _trained(outs[1][1])
  points = sorted(p.name for p in workdir.iterdir() if (p / "config.json").exists())
  assert len(points) == 4 and sorted(trained) == points  # each exactly once
  for p in points:
    assert json.loads((workdir / p / "status.json").read_text())["status"] == "done"
    assert not (workdir / p / "checkpoints").exists()
  assert not [n for n in os.listdir(workdir) if n.startswith(".claim-")]
  table = (workdir / "summary.md").read_text()
  assert table.count("| k=") == 4 and "not finished" not in table
  assert "(worker 0/1)" in outs[0][1] and "ETA" in outs[0][1]


@pytest.mark.slow
def test_slurm_array_workers_split_the_sweep(tmp_path):
  workdir = tmp_path / "runs"
  procs = [_start(tmp_path, workdir, env={"SLURM_ARRAY_TASK_ID": str(i),
                                          "SLURM_ARRAY_TASK_COUNT": "2"}) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
  points = sweep.expand(launch_config(tmp_path))
  for i, (_, err) in enumerate(outs):
    assert _trained(err) == [p.id for p in points[i::2]]
    assert f"(worker {i}/2)" in err
  assert (workdir / "summary.md").read_text().count("| k=") == 4


def launch_config(tmp_path):
  namespace = {}
  exec(SWEEP, namespace)  # noqa: S102 - the test's own config text
  return namespace["get_config"]()


# ------------------------------------------------------------------------ bad input

def _bad_cases(tmp_path):
  """(name, extra args, env, expected text); each must exit 2 with one line, write nothing.

  tests/test_launch.py covers lr < 0, decay < 0, k > the training set, k not a multiple
  of the device count and unknown fields the same way.
  """
  empty = tmp_path / "empty_idx"
  empty.mkdir()
  corrupt = tmp_path / "corrupt_idx"
  corrupt.mkdir()
  for stem in idx_files.IDX_FILES.values():
    (corrupt / stem).write_bytes(b"\x00\x00\x08\x03garbage")
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  return [
      ("empty sweep list", ["--config.sweep.product.learning_rate=()"], {},
       "config.sweep.product.learning_rate=() is invalid: a non-empty tuple"),
      ("unknown field", ["--config.learning_rat=0.1"], {},
       "--config.learning_rat=0.1 is invalid: the config has no field 'learning_rat'"),
      ("search without a space", ["--config.sweep.search.trials=3"], {},
       "config.sweep.search.space={} is invalid: at least one field for 3 trials"),
      ("lr zero", ["--config.sweep.product.learning_rate=(0.5, 0.0)"], {},
       "config.learning_rate=0.0 is invalid: a finite number > 0"),
      ("missing IDX", ["--config.data.name=mnist", f"--config.data.dir={empty}"], {},
       f"config.data.dir='{empty}' is invalid: missing train-images-idx3-ubyte"),
      ("corrupt IDX", ["--config.data.name=mnist", f"--config.data.dir={corrupt}"], {},
       f"config.data.dir='{corrupt}' is invalid: corrupt IDX file"),
      ("worker index", ["--worker_index=2", "--num_workers=2"], {},
       "--worker_index=2 is invalid: an index in [0, 2)"),
      ("kubernetes index without count", [], {"JOB_COMPLETION_INDEX": "0"},
       "--num_workers=<unset> is invalid: required with JOB_COMPLETION_INDEX"),
      ("unwritable workdir", [], {"WORKDIR": str(a_file / "runs")},
       f"--workdir={a_file / 'runs'} is invalid: not a writable folder"),
  ]


def test_every_bad_input_exits_2_with_one_line_naming_it_and_writes_nothing(tmp_path):
  cases = _bad_cases(tmp_path)
  procs = []
  for i, (_, args, env, _) in enumerate(cases):  # all at once: each is a jax start-up
    workdir = env.pop("WORKDIR", str(tmp_path / f"runs{i}"))
    procs.append((workdir, _start(tmp_path, workdir, *args, env=env)))
  for (name, _, _, expected), (workdir, proc) in zip(cases, procs):
    out, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 2, (name, proc.returncode, err[-2000:])
    assert len(lines) == 1 and lines[0] == f"error: {lines[0][7:]}", (name, err[-2000:])
    assert expected in lines[0], (name, lines[0])
    assert not os.path.exists(workdir) or name == "unwritable workdir", name
  assert (tmp_path / "a_file").read_text() == ""


def test_a_workdir_of_another_sweep_exits_2_and_is_left_alone(tmp_path):
  workdir = tmp_path / "runs"
  points = sweep.expand(launch_config(tmp_path))
  stored = dict(points[0].config.to_dict(), learning_rate=0.123)
  os.makedirs(workdir / points[0].id)
  files.write_json(workdir / points[0].id / "config.json", stored)
  before = sorted(os.listdir(workdir)), (workdir / points[0].id / "config.json").read_text()
  proc = _start(tmp_path, workdir)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 2, err[-2000:]
  (line,) = err.strip().splitlines()
  assert line.startswith(f"error: --workdir={workdir} is invalid: it holds a different sweep")
  assert points[0].id in line and "learning_rate: stored 0.123, this sweep 0.5" in line
  assert (sorted(os.listdir(workdir)), (workdir / points[0].id / "config.json").read_text()
          ) == before
