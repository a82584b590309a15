"""--submit: a sweep's workers as submitit jobs (local processes here), killed and resubmitted."""

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import subprocess_env, tiny_config
from sgdlab.sweep import runner, workers

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
# Two points (one per worker), long enough to be killed in the middle.
LONG = ("--config.sweep.product.learning_rate=(0.5,)", "--config.num_epochs=12")
# runner's "point i/N (worker w/n) <id>: <outcome> in <time>" and "...: training <name>".
SETTLED = re.compile(r"\(worker (\d+)/\d+\) (\S+): (done|diverged|failed) in ")
TRAINING = re.compile(r"\(worker \d+/\d+\) (\S+): training ")


def _launch(tmp_path, workdir, *args, block_submitit=False, env=None):
  config = tmp_path / "sweep.py"
  config.write_text(SWEEP)
  launch = [f"--config={config}", f"--workdir={workdir}", *args]
  if block_submitit:  # as if submitit were not installed
    cmd = [sys.executable, "-c", "import runpy, sys; sys.modules['submitit'] = None; "
           "sys.argv[0] = 'sgdlab.launch'; runpy.run_module('sgdlab.launch', "
           "run_name='__main__', alter_sys=True)", *launch]
  else:
    cmd = [sys.executable, "-m", "sgdlab.launch", *launch]
  return subprocess.Popen(cmd, env={**subprocess_env(1), **(env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _logs(workdir):
  """{log file: text} of every job's stderr (absl logs there) in submitit's folder."""
  folder = workdir / "submitit"
  return {n: (folder / n).read_text() for n in sorted(os.listdir(folder))
          if n.endswith("_log.err")}


def _points(workdir):
  return sorted(p.name for p in workdir.iterdir() if (p / "config.json").exists())


def _status(workdir, point):
  return json.loads((workdir / point / "status.json").read_text())


def _assert_each_point_done_exactly_once(workdir, n_points):
  settled = [m.group(2, 3) for text in _logs(workdir).values() for m in SETTLED.finditer(text)]
  points = _points(workdir)
  assert len(points) == n_points
  assert collections.Counter(settled) == {(p, "done"): 1 for p in points}, settled
  for p in points:
    assert _status(workdir, p)["status"] == "done"
    assert not (workdir / p / "checkpoints").exists()
  assert not [n for n in os.listdir(workdir) if n.startswith(".claim-")]


@pytest.mark.slow
def test_two_local_jobs_run_every_point_exactly_once(tmp_path):
  workdir = tmp_path / "runs"
  proc = _launch(tmp_path, workdir, "--submit=local", "--num_workers=2")
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, out + err[-3000:]
  _assert_each_point_done_exactly_once(workdir, 4)
  logs = _logs(workdir)
  assert len(logs) == 2  # two jobs, each one worker
  trained = [sorted(TRAINING.findall(text)) for text in logs.values()]
  seen = sorted(tuple(sorted(set(re.findall(r"\(worker (\d/2)\)", t)))) for t in logs.values())
  assert seen == [("0/2",), ("1/2",)]
  assert sorted(trained[0] + trained[1]) == _points(workdir)
  assert len(trained[0]) == len(trained[1]) == 2  # the round-robin shares
  assert out.count("worker 0/2: job ") == 2 and str(workdir / "submitit") in out
  assert out.count("| k=") == 4  # the summary table, once every job has finished


@pytest.mark.slow
def test_a_job_of_two_processes_trains_each_point_as_one_multihost_run(tmp_path):
  """--multihost with two tasks per job: each point is one run over both processes'
  devices, and process 0 writes."""
  workdir = tmp_path / "runs"
  proc = _launch(tmp_path, workdir, "--submit=local", "--multihost",
                 "--submit_tasks_per_node=2", "--config.sweep.product.batch_size=(32,)")
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, out + err[-3000:]
  logs = _logs(workdir)
  assert len(logs) == 2  # one job, two tasks
  joined = sorted(re.search(r"multi-process run: process (\d) of 2, 1 local of 2 devices",
                            text).group(1) for text in logs.values())
  assert joined == ["0", "1"]
  points = _points(workdir)
  assert len(points) == 2 and all(_status(workdir, p)["status"] == "done" for p in points)
  for text in logs.values():  # both processes train both points, together
    assert [m.group(3) for m in SETTLED.finditer(text)] == ["done", "done"]
  writers = [n for n, text in logs.items() if "summary:" in text]
  assert writers == [n for n in logs if n.endswith("_0_log.err")]  # process 0 writes


@pytest.mark.slow
def test_a_killed_job_resubmitted_resumes_its_point_from_the_checkpoint(tmp_path):
  workdir = tmp_path / "runs"
  proc = _launch(tmp_path, workdir, "--submit=local", "--num_workers=2", *LONG)
  killed, deadline = None, time.time() + 240
  while killed is None and time.time() < deadline and proc.poll() is None:
    for p in _points(workdir) if workdir.exists() else []:
      try:
        status = _status(workdir, p)
      except (OSError, ValueError):
        continue
      # Epoch 2 reported: epoch 1's checkpoint is written (it is saved after its report).
      if status["status"] == "running" and status.get("epoch", 0) >= 2:
        os.kill(status["pid"], signal.SIGKILL)  # the job's process: the worker itself
        killed = p
        break
    time.sleep(0.05)
  out, err = proc.communicate(timeout=300)
  assert killed is not None, out + err[-3000:]
  assert proc.returncode == 1 and "ended without a result" in out, out + err[-3000:]
  assert "the same command again finishes the sweep" in err
  assert _status(workdir, killed)["status"] == "running"  # killed mid-point
  assert (workdir / killed / "checkpoints").exists()

  again = _launch(tmp_path, workdir, "--submit=local", "--num_workers=2", *LONG)
  out, err = again.communicate(timeout=300)
  assert again.returncode == 0, out + err[-3000:]
  _assert_each_point_done_exactly_once(workdir, 2)
  # The killed point was started twice and resumed the second time.
  text = "\n".join(_logs(workdir).values())
  assert TRAINING.findall(text).count(killed) == 2
  resumed = [int(e) for e in re.findall(r"resumed from the checkpoint at epoch (\d+)", text)]
  assert len(resumed) == 1 and resumed[0] >= 1
  history = json.loads((workdir / killed / "history.json").read_text())
  assert history["epochs"]["epoch"] == list(range(1, 13))


def test_slurm_submits_one_array_of_workers_and_returns(tmp_path):
  """With a stand-in sbatch: the script asks for the resources given, and nothing waits."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
  (bin_dir / "sbatch").write_text("#!/bin/sh\necho Submitted batch job 4242\n")
  for tool in ("srun", "sbatch"):
    (bin_dir / tool).chmod(0o755)
  workdir = tmp_path / "runs"
  proc = _launch(tmp_path, workdir, "--submit=slurm", "--num_workers=3", "--slurm_partition=gpu",
                 "--submit_time=30", "--submit_gpus_per_task=1", "--submit_cpus_per_task=4",
                 "--slurm_array_parallelism=2", "--slurm_sbatch=account=abc",
                 env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, out + err[-3000:]
  for i in range(3):
    assert f"worker {i}/3: job 4242_{i}, log {workdir / 'submitit'}/4242_{i}_0_log.err" in out
  script = (workdir / "submitit" / "4242_submission.sh").read_text()
  for line in ("--array=0-2%2", "--partition=gpu", "--time=30", "--gpus-per-node=1",
               "--cpus-per-task=4", "--account=abc", "--signal=USR2@"):
    assert f"#SBATCH {line}" in script, script
  assert "submitit.core._submit" in script
  assert len(list((workdir / "submitit").glob("4242_*_submitted.pkl"))) == 3
  assert not _points(workdir)  # submitted, not run


@pytest.mark.slow
def test_a_preempted_local_job_requeues_itself_and_resumes(tmp_path):
  """submitit's preemption signal (USR2): the task checkpoints, requeues and resumes."""
  workdir = tmp_path / "runs"
  proc = _launch(tmp_path, workdir, "--submit=local", "--num_workers=1", *LONG)
  signalled, deadline = None, time.time() + 240
  while signalled is None and time.time() < deadline and proc.poll() is None:
    for p in _points(workdir) if workdir.exists() else []:
      try:
        status = _status(workdir, p)
      except (OSError, ValueError):
        continue
      if status["status"] == "running" and status.get("epoch", 0) >= 2:
        os.kill(status["pid"], signal.SIGUSR2)
        signalled = p
        break
    time.sleep(0.05)
  out, err = proc.communicate(timeout=300)
  assert signalled is not None and proc.returncode == 0, out + err[-3000:]
  _assert_each_point_done_exactly_once(workdir, 2)
  text = "\n".join(_logs(workdir).values()) + "\n".join(
      (workdir / "submitit" / n).read_text() for n in os.listdir(workdir / "submitit")
      if n.endswith("_log.out"))
  assert "this job is preempted" in text and "Requeued job" in text
  assert re.search(r"resumed from the checkpoint at epoch [1-9]", text)


def test_a_task_requeues_as_the_same_worker_of_the_same_config(tmp_path):
  submitit = pytest.importorskip("submitit")
  from sgdlab.sweep import submit  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.lock()
  options = runner.Options(str(tmp_path), workers.Worker(1, 3), stale_after=5.0)
  task = submit.Task(config, options, {"num_epochs": "3"})
  path = tmp_path / "task.pkl"
  submitit.helpers.DelayedSubmission(task).dump(path)
  loaded = submitit.helpers.DelayedSubmission.load(path).function
  requeued = loaded.checkpoint()
  assert isinstance(requeued, submitit.helpers.DelayedSubmission)
  assert requeued.function is loaded and not requeued.args and not requeued.kwargs
  assert loaded.options == options and loaded.overrides == {"num_epochs": "3"}
  assert loaded.config == config and loaded.config.is_locked


@pytest.mark.parametrize("fields,expected", [
    (dict(kind="pbs"), "--submit=pbs is invalid: one of slurm, local"),
    (dict(worker_index=1, num_workers=2), "--worker_index=1 is invalid: not with --submit"),
    (dict(num_workers=-3), "--num_workers=-3 is invalid: an integer >= 1"),
    (dict(multihost=True), "--multihost=True is invalid: with --submit, together with"),
    (dict(tasks_per_node=2), "--multihost=False is invalid: with --submit, together with"),
    (dict(multihost=True, nodes=2), "--submit_nodes=2 is invalid: 1 for --submit=local"),
    (dict(tasks_per_node=0), "--submit_tasks_per_node=0 is invalid: an integer >= 1"),
    (dict(time_min=0), "--submit_time=0 is invalid: an integer >= 1"),
    (dict(gpus_per_task=-1), "--submit_gpus_per_task=-1 is invalid: an integer >= 0"),
    (dict(array_parallelism=0), "--slurm_array_parallelism=0 is invalid"),
    (dict(sbatch=("account",)), "--slurm_sbatch=account is invalid: key=value"),
    (dict(sbatch=("array=0-3",)), "--slurm_sbatch=array=0-3 is invalid: a parameter other "
     "than array"),
])
def test_bad_submit_flags_are_usage_errors(fields, expected):
  from sgdlab.errors import UsageError  # pylint: disable=g-import-not-at-top
  from sgdlab.sweep import submit  # pylint: disable=g-import-not-at-top
  with pytest.raises(UsageError) as e:
    submit.check(submit.Request(**{"kind": "local", **fields}))
  assert str(e.value).startswith(expected), str(e.value)


def test_sbatch_parameters_become_submitit_additional_parameters():
  from sgdlab.sweep import submit  # pylint: disable=g-import-not-at-top
  assert submit.sbatch_parameters(["account=abc", "--qos=high", "mem=64G", "comment=a=b"]) == {
      "account": "abc", "qos": "high", "mem": "64G", "comment": "a=b"}


def test_bad_submit_input_exits_2_with_one_line_and_writes_nothing(tmp_path):
  cases = [  # (arguments, whether submitit is importable, the error)
      (["--submit=local", "--num_workers=2"], False,
       "--submit=local is invalid: submitit is not installed"),
      (["--submit=slurm"], False, "--submit=slurm is invalid: submitit is not installed"),
      (["--submit=local", "--worker_index=0", "--num_workers=2"], True,
       "--worker_index=0 is invalid: not with --submit"),
      (["--submit=local", "--num_workers=0"], True, "--num_workers=0 is invalid: an integer >= 1"),
      # Planned before anything is submitted: a bad config writes no workdir and no job.
      (["--submit=local", "--num_workers=2", "--config.num_epochs=0"], True,
       "config.num_epochs=0 is invalid"),
  ]
  if not shutil.which("srun"):
    cases.append((["--submit=slurm", "--num_workers=2"], True,
                  "--submit=slurm is invalid: no SLURM here"))
  procs = [_launch(tmp_path, tmp_path / f"runs{i}", *args, block_submitit=not importable)
           for i, (args, importable, _) in enumerate(cases)]  # at once: each is a start-up
  for i, ((args, _, expected), proc) in enumerate(zip(cases, procs)):
    out, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 2, (args, proc.returncode, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (
        args, err[-2000:])
    assert not out and not (tmp_path / f"runs{i}").exists(), args
