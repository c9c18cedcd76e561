"""Records on disk: append-and-resume JSONL for work done item by item, atomic whole files.

Labels, candidate pairs and judgments are appended as they are computed (one JSON object per
line, flushed per chunk), so a killed job loses at most the chunk it was in and a rerun skips
the ids already written. Files written whole (a policy's generations, summaries, the stage
log) are written to a temporary file and renamed, so a reader never sees half of one. Only
process 0 writes; every process reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

from rlaif_jax import partitioning


def json_line(record: dict) -> str:
  """One record as a JSONL line."""
  return json.dumps(record) + "\n"


def read_jsonl(path: str) -> list[dict]:
  """Records already written to path ([] when it does not exist); a last line cut off by a kill
  is dropped (and truncated away, so the next append starts clean)."""
  if not os.path.exists(path):
    return []
  records, good_bytes = [], 0
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        break
      good_bytes += len(line.encode("utf-8"))
  if partitioning.is_main_process():
    with open(path, "r+b") as f:
      f.truncate(good_bytes)
  return records


class Records:
  """An append-only JSONL file of records keyed by "id", resumable after a kill.

  with Records(path) as out:
    todo = [x for x in items if x["id"] not in out.done]
    out.append([...])            # process 0 writes and flushes; others do nothing
  """

  def __init__(self, path: str):
    self.path = path
    self.records = read_jsonl(path)
    self.done = {r["id"] for r in self.records if "id" in r}
    self._file = None

  def __enter__(self) -> Records:
    if partitioning.is_main_process():
      self._file = _open_for_append(self.path)
    return self

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def append(self, records: Iterable[dict]) -> None:
    records = list(records)
    self.records.extend(records)
    self.done.update(r["id"] for r in records if "id" in r)
    if self._file is not None:
      self._file.write("".join(json_line(r) for r in records))
      self._file.flush()


def _open_for_append(path: str):
  """path opened for appending, so that the next record starts on a line of its own (a last
  line written without its newline gets one first)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  ends_cleanly = True
  if os.path.exists(path) and os.path.getsize(path):
    with open(path, "rb") as f:
      f.seek(-1, os.SEEK_END)
      ends_cleanly = f.read(1) == b"\n"
  f = open(path, "a", encoding="utf-8")
  if not ends_cleanly:
    f.write("\n")
  return f


def append_jsonl(path: str, rows: Sequence[dict]) -> None:
  """Appends rows to a JSONL log (samples, metrics); process 0 only."""
  if partitioning.is_main_process():
    with _open_for_append(path) as f:
      f.write("".join(json_line(r) for r in rows))


def write_text(path: str, text: str) -> None:
  """Writes a whole file atomically (temporary file, then rename); process 0 only."""
  if not partitioning.is_main_process():
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def write_jsonl(path: str, records: Sequence[dict]) -> None:
  """A whole JSONL file, atomically: a killed job never leaves half of it."""
  write_text(path, "".join(json_line(r) for r in records))


def write_json(path: str, obj, indent: int | None = 1) -> None:
  """A whole JSON file, atomically."""
  write_text(path, json.dumps(obj, indent=indent, default=str))
