"""Reading jsonl(.gz) files line by line, with errors that name file, line and field.

A parser turns one JSON object into a record or raises FieldError; `read_records` either
stops at the first bad line (the default) or skips bad lines and counts them by reason in a
LoadReport, which also lists duplicate ids and pairs whose two responses are identical.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import logging
import os
import zlib
from collections.abc import Callable, Iterable

from rlaif_jax import records


class FieldError(ValueError):
  """A record's field is missing or wrong; read_records adds the file and line."""

  def __init__(self, field: str, problem: str):
    super().__init__(f"field {field!r}: {problem}")
    self.field = field
    self.problem = problem


class DataError(ValueError):
  """A bad line in a data file, named by path and line number."""


@dataclasses.dataclass
class LoadReport:
  path: str
  examples: int = 0
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  duplicate_ids: list = dataclasses.field(default_factory=list)
  identical_pairs: list = dataclasses.field(default_factory=list)

  @property
  def num_skipped(self) -> int:
    return sum(self.skipped.values())

  def summary(self) -> str:
    parts = [f"{self.path}: {self.examples} examples"]
    if self.skipped:
      parts.append(f"{self.num_skipped} skipped (" + "; ".join(f"{n} x {r}" for r, n in self.skipped.items()) + ")")
    if self.duplicate_ids:
      parts.append(f"{len(self.duplicate_ids)} duplicate ids (first: {self.duplicate_ids[0]})")
    if self.identical_pairs:
      parts.append(f"{len(self.identical_pairs)} pairs with identical responses (first: {self.identical_pairs[0]})")
    return ", ".join(parts)

  def to_json(self) -> dict:
    return {
      "path": self.path,
      "examples": self.examples,
      "skipped": dict(self.skipped),
      "duplicate_ids": len(self.duplicate_ids),
      "identical_pairs": len(self.identical_pairs),
    }


MAX_LINE_BYTES = 16 << 20  # one record; a longer line is not a record (a binary file, a file with no newlines)


def _lines(path: str) -> Iterable[records.JsonLine]:
  """The lines of a data file (records.json_lines); a path that is not a regular file (a folder,
  a device, a FIFO), bytes that are not UTF-8, a line over MAX_LINE_BYTES, a corrupt or cut-off
  gzip stream and a file with no lines at all are DataErrors naming the file (and line)."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: not a regular file (a folder, a device or a pipe); name a .jsonl or .jsonl.gz file")
  number = 0
  try:
    for line in records.json_lines(path, DataError, MAX_LINE_BYTES):
      number = line.number
      if line.binary:
        raise DataError(f"{path}:{number}: {line.error}")
      yield line
  except (gzip.BadGzipFile, EOFError, zlib.error) as e:
    where = f"{path}:{number + 1}" if number else path
    raise DataError(f"{where}: not a readable gzip file ({e or type(e).__name__})") from None
  if number == 0 and not _has_bytes(path):
    raise DataError(f"{path}: the file is empty")


def _has_bytes(path: str) -> bool:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    return bool(f.read(1))


def read_records(
  paths: str | list[str],
  parse: Callable[[dict, str], dict | None],
  skip_bad: bool = False,
  name: str | None = None,
  unique_ids: bool = False,
) -> tuple[list[dict], LoadReport]:
  """Parses every line of the files into records.

  parse(obj, where) returns a record (a dict, with an "id" when the format has one), or None
  to drop the line on purpose (e.g. a filter). `where` is "path:line", for default ids. With
  unique_ids (the project's own files: candidates, prompts, AI labels, whose ids key resumes
  and joins) a repeated id is a DataError naming both lines, even with skip_bad; otherwise it
  is counted in the report.
  """
  paths = [paths] if isinstance(paths, str) else list(paths)
  report = LoadReport(name or ", ".join(paths))
  records, seen = [], {}
  for path in paths:
    if not os.path.exists(path):
      raise FileNotFoundError(f"data file {path!r} does not exist")
    for line in _lines(path):
      where = f"{path}:{line.number}"
      try:
        if line.error is not None:
          raise FieldError("<line>", line.error)
        record = parse(line.value, where)
      except FieldError as e:
        if not skip_bad:
          raise DataError(f"{where}: {e}") from None
        report.skipped[e.problem if e.field == "<line>" else f"{e.field}: {e.problem}"] += 1
        continue
      if record is None:
        continue
      rid = record.get("id")
      if rid is not None:
        if rid in seen:
          if unique_ids:
            raise DataError(f"{where}: id {rid!r} is already on {seen[rid]}; ids must be unique")
          report.duplicate_ids.append(rid)
        seen.setdefault(rid, where)
      if "response_a" in record and record["response_a"].strip() == record["response_b"].strip():
        report.identical_pairs.append(rid or where)
      records.append(record)
  report.examples = len(records)
  if report.skipped or report.duplicate_ids or report.identical_pairs:
    logging.warning("%s", report.summary())
  return records, report


def require_str(obj: dict, field: str, allow_empty: bool = False) -> str:
  """obj[field] as a string, or FieldError naming the field."""
  if field not in obj:
    raise FieldError(field, "missing")
  value = obj[field]
  if not isinstance(value, str):
    raise FieldError(field, f"expected a string, got {type(value).__name__}")
  if not allow_empty and not value.strip():
    raise FieldError(field, "empty")
  return value
