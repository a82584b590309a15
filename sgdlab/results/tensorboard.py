"""TensorBoard event files for runs: per-step and per-epoch scalars, and their hparams.

`Events` is a `run_loop` on_epoch callback: each call writes what a member's history
gained since the last one and flushes, so TensorBoard shows a run while it trains.
`tensorboard --logdir=<dir>` lists one run per folder; the HPARAMS tab compares them by
the config (flattened) and their final test/train accuracy and loss.

Built on tensorboardX, not clu.metric_writers: clu 0.0.12 (its last release, 2024-04)
imports TensorFlow in create_default_writer, where tensorboardX needs only numpy,
packaging and protobuf. Events go through tensorboardX's synchronous `EventsWriter`
rather than its `SummaryWriter`, which hands events to a thread and whose flush() does
not wait for them (5,000 scalars, then flush(): 4,649 were on disk); a kill -9 after an
epoch's flush would lose the epoch's tail.

Global steps: the i-th SGD step's loss and lr are at step i (1-based), an epoch's row at
the step that ends it (the updates of the epochs so far). TensorBoard keeps scalars as float32.

Resume: a folder's `.steps_written` note says how many steps earlier processes wrote
and flushed there. A process opens its event file with a purge at the step after what
both that note and the (restored) history hold, so TensorBoard hides what a killed
process wrote past the checkpoint, and writes only what lies beyond: the restored rows
are on disk already, with their own wall times.
"""

from __future__ import annotations

import bisect
import dataclasses
import glob
import math
import numbers
import os
import re
import time
from typing import Any, Mapping, Sequence

import jax
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.api_pb2 import Status
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionEndInfo
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboardX.summary import hparams as hparams_summaries

from sgdlab.results.history import History

# History.steps columns -> tags; the noise-scale estimates are NaN where none was taken.
STEP_TAGS = {"loss": "step/loss", "lr": "step/lr", "grad_sq": "step/grad_sq",
             "trace_sigma": "step/trace_sigma", "batch_size": "step/batch_size"}
# History.epochs columns -> tags; any other column becomes epoch/<name>.
EPOCH_TAGS = {"train_loss": "train/loss", "train_accuracy": "train/accuracy",
              "test_loss": "test/loss", "test_accuracy": "test/accuracy", "lr": "epoch/lr",
              "examples_per_sec": "epoch/examples_per_sec", "wall_time": "epoch/wall_time",
              "noise_scale": "noise/B_simple", "grad_sq": "noise/grad_sq",
              "trace_sigma": "noise/trace_sigma", "probe_noise_scale": "noise/B_simple_probe",
              "probe_grad_sq": "noise/grad_sq_probe",
              "probe_trace_sigma": "noise/trace_sigma_probe",
              "hessian_eig_1": "curvature/lambda_max",
              "directional_curvature": "curvature/directional",
              "epsilon_sharpness": "curvature/epsilon_sharpness"}
SPLITS = ("train", "validation", "test")


def epoch_tag(column: str) -> str:
  """The tag of a History.epochs column: <split>/<figure> for a split's figures
  (validation_loss, test_bits_per_byte), curvature/lambda_<i> for hessian_eig_<i>, else as
  EPOCH_TAGS names it or epoch/<name>."""
  if column.startswith("hessian_eig_") and column != "hessian_eig_1":
    return f"curvature/lambda_{column.removeprefix('hessian_eig_')}"
  split, _, figure = column.partition("_")
  if column not in EPOCH_TAGS and split in SPLITS and figure:
    return f"{split}/{figure}"
  return EPOCH_TAGS.get(column, f"epoch/{column}")


# The HPARAMS tab's metric columns: each run's last value of these scalars.
METRICS = ("test/accuracy", "test/loss", "train/accuracy", "train/loss")
NOTE = ".steps_written"


def hparams(config: Mapping[str, Any]) -> dict[str, float | str | bool]:
  """The config as dotted names (the sweep spec left out), in the types the hparams plugin
  takes: numbers, strings and bools; tuples such as model.hidden become strings."""
  out: dict[str, float | str | bool] = {}

  def walk(prefix: str, d: Mapping[str, Any]) -> None:
    for key, value in d.items():
      name = prefix + key
      if isinstance(value, Mapping):
        walk(name + ".", value)
      elif isinstance(value, (bool, str)):
        out[name] = value
      elif isinstance(value, numbers.Real):
        out[name] = float(value)
      elif value is not None:
        out[name] = str(list(value) if isinstance(value, tuple) else value)

  walk("", {k: v for k, v in config.items() if k != "sweep"})
  return out


def member_dirs(log_dir: str, names: Sequence[str]) -> list[str]:
  """One folder per member of a population, named after it: '<i>_k=32_lr=0.5...'."""
  return [os.path.join(log_dir, f"{i}_" + re.sub(r"[^\w.=+-]+", "_", name))
          for i, name in enumerate(names)]


@dataclasses.dataclass
class _Member:
  path: str
  file: EventsWriter | None = None
  steps: int = 0  # steps whose events are in the folder, from this process or earlier ones
  rows: int = 0


class Events:
  """on_epoch(member, history) writing one TensorBoard run per member, into log_dirs[member].

  Only process 0 writes; with no log_dirs every call does nothing. `finish` after the
  loop writes the steps past the last row (a divergence) and each run's status; `close`
  (or leaving a `with` block) closes whatever is still open.
  """

  def __init__(self, log_dirs: Sequence[str] | None, *, epoch_end_steps: Sequence[int]):
    """epoch_end_steps: the global step at each epoch's end (`Resolved.epoch_end_steps`;
    k, and so the steps of an epoch, may change between epochs)."""
    on = bool(log_dirs) and jax.process_index() == 0
    self._members = [_Member(d) for d in log_dirs] if on else []
    self._ends = list(epoch_end_steps)

  def __call__(self, member: int, history: History) -> None:
    if self._members:
      self._write(self._members[member], history)

  def finish(self, histories: Sequence[History]) -> None:
    """The runs ended: their last steps, SUCCESS (or FAILURE if diverged), closed."""
    for m, history in zip(self._members, histories):
      self._write(m, history)
      status = "STATUS_FAILURE" if history.diverged else "STATUS_SUCCESS"
      info = HParamsPluginData(session_end_info=SessionEndInfo(
          status=Status.Value(status), end_time_secs=time.time()), version=0)
      m.file.write_event(_event(0, [_plugin_value("_hparams_/session_end_info", info)]))
      _close(m)

  def close(self) -> None:
    for m in self._members:
      _close(m)

  def __enter__(self) -> "Events":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()

  def _open(self, m: _Member, history: History) -> None:
    os.makedirs(m.path, exist_ok=True)
    earlier = _read_note(m.path)
    m.steps = min(earlier, len(history.steps.get("loss", [])))
    m.rows = min(history.num_epochs, bisect.bisect_right(self._ends, m.steps))
    # A name of its own (tensorboardX opens it "wb"), sorting after the earlier files.
    m.file = EventsWriter(os.path.join(m.path, "events"), f".{time.time_ns()}")
    # Hides events of earlier processes at this step and after (none in a new folder).
    m.file.write_event(Event(wall_time=time.time(), step=m.steps + 1,
                             session_log=SessionLog(status=SessionLog.START)))
    if not earlier:
      experiment, start, _ = hparams_summaries(hparams(history.config),
                                               dict.fromkeys(METRICS, 0.0))
      for summary in (experiment, start):
        m.file.write_event(Event(wall_time=time.time(), step=0, summary=summary))

  def _write(self, m: _Member, history: History) -> None:
    if m.file is None:
      self._open(m, history)
    steps = history.steps
    for i in range(m.steps, len(steps.get("loss", []))):
      m.file.write_event(_event(i + 1, [
          _value(tag, steps[key][i]) for key, tag in STEP_TAGS.items()
          if key in steps and (key == "loss" or math.isfinite(steps[key][i]))]))
    m.steps = max(m.steps, len(steps.get("loss", [])))
    epochs = history.epochs
    for r in range(m.rows, history.num_epochs):
      step = self._ends[int(epochs["epoch"][r]) - 1]
      m.file.write_event(_event(step, [
          _value(epoch_tag(key), column[r])
          for key, column in epochs.items() if key != "epoch" and math.isfinite(column[r])]))
    m.rows = max(m.rows, history.num_epochs)
    m.file.flush()
    _write_note(m.path, m.steps)


def _value(tag: str, x: float) -> Summary.Value:
  return Summary.Value(tag=tag, simple_value=float(x))


def _plugin_value(tag: str, content: HParamsPluginData) -> Summary.Value:
  meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
      plugin_name="hparams", content=content.SerializeToString()))
  return Summary.Value(tag=tag, metadata=meta)


def _event(step: int, values: list[Summary.Value]) -> Event:
  return Event(wall_time=time.time(), step=step, summary=Summary(value=values))


def _close(m: _Member) -> None:
  if m.file is not None:
    m.file.close()
    m.file = None


def _read_note(path: str) -> int:
  """Steps earlier processes wrote here; 0 if none (or their event files are gone)."""
  if not glob.glob(os.path.join(path, "*tfevents*")):
    return 0
  try:
    with open(os.path.join(path, NOTE)) as f:
      return int(f.read())
  except (OSError, ValueError):
    return 0


def _write_note(path: str, steps: int) -> None:
  """After the flush, so it never claims more than is on disk."""
  tmp = os.path.join(path, NOTE + ".tmp")
  with open(tmp, "w") as f:
    f.write(str(steps))
  os.replace(tmp, os.path.join(path, NOTE))
