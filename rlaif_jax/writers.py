"""Metric sinks: TensorBoard through clu and a JSONL file, written by process 0 only."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax
import numpy as np

from rlaif_jax import records


def _scalar(v) -> float:
  return float(np.asarray(v))


class MetricsWriter:
  """Writes scalar metrics to `<logdir>/metrics.jsonl` and to TensorBoard event files.

  resumed_at, a resumed run's checkpoint step, first cuts metrics.jsonl back to the steps up to
  it (the run trains the later ones again), and a metric already logged at a step is not logged
  again (e.g. an RRHF round's opening scores, recomputed when a round resumes in its middle):
  after a kill and a resume each step's metrics appear once.
  """

  def __init__(self, logdir: str, tensorboard: bool = True, resumed_at: int | None = None):
    self.active = jax.process_index() == 0
    self.logdir = logdir
    self._tb = None
    self._jsonl = None
    self._logged: set[tuple[int, str]] = set()
    if not self.active:
      return
    os.makedirs(logdir, exist_ok=True)
    path = os.path.join(logdir, "metrics.jsonl")
    if resumed_at is not None:
      self._logged = {
        (row["step"], k) for row in records.keep_until(path, "step", resumed_at) if "step" in row for k in row
      }
    self._jsonl = records.open_for_append(path)
    if tensorboard:
      from clu import metric_writers  # imports TensorFlow's summary writer: only when asked

      self._tb = metric_writers.SummaryWriter(os.path.join(logdir, "tensorboard"))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.active:
      return
    values = {k: _scalar(v) for k, v in scalars.items() if (int(step), k) not in self._logged}
    if not values:
      return
    self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      self._tb.write_scalars(int(step), values)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()
      self._tb = None


def read_jsonl_metrics(path: str) -> list[dict]:
  """The records of a metrics.jsonl file, one dict per logged step; a line that is not one is a
  ValueError naming file and line (a torn last line is dropped: a kill cut it)."""
  from rlaif_jax import records

  try:
    return records.read_jsonl(path)
  except records.RecordsError as e:
    raise records.RecordsError(f"{e} (a training log: deleting {path} loses only its curves)") from None


def metrics_markdown(title: str, metrics: Mapping[str, object]) -> list[str]:
  """Markdown lines: a heading and a metric/value table of the scalar entries; a value with a
  `<key>_interval` [low, high] beside it reads `0.438 [0.307, 0.577]`."""
  lines = [f"# {title}", "", "| metric | value |", "| --- | --- |"]
  for k, v in metrics.items():
    interval = metrics.get(f"{k}_interval")
    if isinstance(v, (list, dict)):
      continue
    if isinstance(v, float) and interval:
      lines.append(f"| {k} | {v:.3f} [{interval[0]:.3f}, {interval[1]:.3f}] |")
    else:
      lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
  return lines


def shown_definitions(definitions: Mapping[str, str], shown, always=("interval",)) -> dict:
  """The definitions of the keys in shown, in their order, with those in always once any is there."""
  found = [k for k in definitions if k in shown and k not in always]
  return {k: line for k, line in definitions.items() if k in found or (found and k in always)}


def definitions_markdown(definitions: Mapping[str, str]) -> list[str]:
  """Markdown lines: a "Definitions" section, one line per metric a report shows."""
  if not definitions:
    return []
  return ["", "## Definitions", "", *(f"- {line}" for line in definitions.values())]
