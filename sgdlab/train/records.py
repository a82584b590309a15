"""What the loop writes into a History: steps, epoch rows, evaluations, divergence, the end.

A History's epoch columns are known before the first epoch (`epoch_columns`), so a run
that diverges in its first epoch still has them, empty.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from absl import logging

from sgdlab import noise
from sgdlab.config import batch_schedule
from sgdlab.config import to_dict
from sgdlab.results import diagnostics
from sgdlab.results.history import History

_NOISE = ("grad_sq", "trace_sigma", "noise_scale")
_PROBE = ("probe_grad_sq", "probe_trace_sigma", "probe_noise_scale")


def split_columns(split: str, language: bool) -> list[str]:
  """<split>_loss and _accuracy; for a byte-level language model also perplexity and
  bits per byte (its loss is nats per token, and a token is a byte)."""
  return [f"{split}_{f}" for f in ("loss", "accuracy") +
          (("perplexity", "bits_per_byte") if language else ())]


def split_figures(split: str, result: dict[str, Any], language: bool) -> dict[str, float]:
  """The figures of `split_columns` from an evaluation's loss and accuracy."""
  loss = float(result["loss"])
  row = {f"{split}_loss": loss, f"{split}_accuracy": float(result["accuracy"])}
  if language:
    row[f"{split}_perplexity"] = float(np.exp(loss))
    row[f"{split}_bits_per_byte"] = loss / float(np.log(2.0))
  return row


def epoch_columns(config: Any, splits: Sequence[str]) -> list[str]:
  """Every column of an epoch row, in order, for a run of `config` holding out `splits`."""
  language = config.data.name == "text"
  out = ["epoch", "train_loss", "train_accuracy"] + (["train_bits_per_byte"] if language else [])
  for split in ("test", "validation"):
    if split in splits:
      out += split_columns(split, language)
  out += ["lr"] + (["batch_size"] if batch_schedule.is_scheduled(config) else [])
  out += ["wall_time", "examples_per_sec"]
  out += list(_NOISE) if config.noise_scale else []
  return out + (list(_PROBE) if config.noise_probe_batches else [])


def new_history(member: Any, splits: Sequence[str], compile_time: float) -> History:
  return History(name=member.name, config=to_dict(member.config), compile_time=compile_time,
                 epochs={c: [] for c in epoch_columns(member.config, splits)})


def append_steps(history: History, step_metrics: dict[str, np.ndarray],
                 ema: noise.NoiseEMA | None) -> None:
  """The steps' loss and lr; with the online noise scale, its per-step estimates (NaN
  where a step had no full batch) and the EMA updated by them."""
  history.steps.setdefault("loss", []).extend(np.asarray(step_metrics["loss"]).tolist())
  history.steps.setdefault("lr", []).extend(np.asarray(step_metrics["lr"]).tolist())
  if "batch_size" in step_metrics:  # config.batch_size_schedule: each step's k
    history.steps.setdefault("batch_size", []).extend(
        np.asarray(step_metrics["batch_size"]).astype(int).tolist())
  if ema is None:
    return
  grad_sq, trace = noise.online_estimates(step_metrics["g_small_sq"], step_metrics["g_big_sq"],
                                          step_metrics["b_small"], step_metrics["b_big"])
  full = np.asarray(step_metrics["full"]) > 0
  grad_sq, trace = np.where(full, grad_sq, np.nan), np.where(full, trace, np.nan)
  ema.update(grad_sq, trace)
  history.steps.setdefault("grad_sq", []).extend(grad_sq.tolist())
  history.steps.setdefault("trace_sigma", []).extend(trace.tolist())


def record_divergence(history: History, step_metrics: dict[str, np.ndarray], *, epoch: int,
                      steps_before: int, diverged_at: int,
                      ema: noise.NoiseEMA | None) -> None:
  """Keep the epoch's steps up to and including the failing one; no epoch row."""
  kept = diverged_at - steps_before + 1
  append_steps(history, {key: v[:kept] for key, v in step_metrics.items()}, ema)
  history.diverged = f"diverged at step {diverged_at + 1} (epoch {epoch + 1})"
  logging.warning("%s | %s", history.name, history.diverged)


def record_eval(history: History, row: dict[str, float]) -> None:
  """An evaluation at a step inside or at the end of an epoch (`History.evals`)."""
  for key, value in row.items():
    history.evals.setdefault(key, []).append(value)


def record_epoch(history: History, config: Any, epoch: int, step_metrics: dict[str, np.ndarray],
                 figures: dict[str, float], *, wall: float, n_train: int,
                 ema: noise.NoiseEMA | None) -> None:
  """Append a finished epoch: its steps, its row of means, the figures the loop's pieces
  measured at its end (held-out splits, the noise probe), one log line."""
  append_steps(history, step_metrics, ema)
  row = dict(epoch=epoch + 1, **diagnostics.epoch_means(step_metrics))
  if config.data.name == "text":
    row["train_bits_per_byte"] = row["train_loss"] / float(np.log(2.0))
  row.update(figures)
  row["lr"] = float(step_metrics["lr"][-1])
  if "batch_size" in step_metrics:
    row["batch_size"] = int(step_metrics["batch_size"][-1])
  row.update(wall_time=wall, examples_per_sec=n_train / wall)
  if ema is not None:
    row.update(zip(_NOISE, ema.values()))
  for key, value in row.items():
    history.epochs.setdefault(key, []).append(value)
  _log_epoch(history.name, config, row)


def _log_epoch(name: str, config: Any, row: dict[str, float]) -> None:
  validation = (f" validation loss {row['validation_loss']:.4f} acc "
                f"{row['validation_accuracy']:.4f} |" if "validation_loss" in row else "")
  bits = f" {row['test_bits_per_byte']:.3f} bits/byte" if "test_bits_per_byte" in row else ""
  noise_scale = f" | B_simple {row['noise_scale']:.1f}" if "noise_scale" in row else ""
  probe = f" (probe {row['probe_noise_scale']:.1f})" if "probe_noise_scale" in row else ""
  logging.info("%s | epoch %d/%d | train loss %.4f acc %.4f |%s test loss %.4f acc %.4f%s | "
               "lr %.4g | %.2fs %.0f ex/s%s%s", name, row["epoch"], config.num_epochs,
               row["train_loss"], row["train_accuracy"], validation, row["test_loss"],
               row["test_accuracy"], bits, row["lr"], row["wall_time"],
               row["examples_per_sec"], noise_scale, probe)


def finish(history: History, config: Any, state: Any) -> History:
  """Diagnostics from the whole curve, and the final state."""
  threshold = diagnostics.stability_threshold(config.optimizer.name,
                                              config.optimizer.momentum)
  history.diagnostics = diagnostics.diagnose(history.epochs, diverged=history.diverged,
                                             batch_size=int(config.batch_size),
                                             learning_rate=config.learning_rate,
                                             threshold=threshold)
  for note in history.diagnostics:
    logging.info("%s | %s", history.name, note)
  history.state = state
  return history
