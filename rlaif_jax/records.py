"""Records on disk: append-and-resume JSONL for work done item by item, atomic whole files.

Labels, candidate pairs and judgments are appended as they are computed (one JSON object per
line, flushed per chunk), so a killed job loses at most the chunk it was in and a rerun skips
the ids already written. Files written whole (a policy's generations, summaries, the stage
log) are written to a temporary file and renamed, so a reader never sees half of one. Only
process 0 writes; every process reads.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import gzip
import hashlib
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax

from rlaif_jax import partitioning


def json_line(record: dict) -> str:
  """One record as a JSONL line."""
  return json.dumps(record) + "\n"


class RecordsError(ValueError):
  """A records file that cannot be resumed as it is: a bad line (named by file and line), or
  records made with other settings than this run's."""


@dataclasses.dataclass(frozen=True)
class JsonLine:
  """One non-blank line of a JSONL file, as json_lines reads it."""

  number: int  # 1-based
  start: int  # byte offset of its first byte (where a cut would go)
  value: Any  # the parsed JSON value; None where error
  error: str | None  # why it is not a record: not UTF-8 text, not JSON, not a JSON object
  binary: bool  # error is that its bytes are not UTF-8 text
  torn: bool  # the last bytes of the file, without their newline: a line a kill cut off


def json_lines(path: str, fail: type[Exception] = ValueError, max_bytes: int | None = None) -> Iterator[JsonLine]:
  """The one JSONL reader: every non-blank line of path (gzip-compressed when it ends in .gz),
  parsed, in order. A line that is not a JSON object is yielded with its error for the caller to
  judge (a torn last line is dropped by a resume, a bad line of data skipped or refused); a UTF-8
  byte-order mark at the start is dropped; a line over max_bytes raises fail naming file and line.
  Gzip's own errors reach the caller."""
  opener = gzip.open if path.endswith(".gz") else open
  limit = -1 if max_bytes is None else max_bytes + 1
  with opener(path, "rb") as f:
    offset = 0
    for number, raw in enumerate(iter(lambda: f.readline(limit), b""), start=1):
      if max_bytes is not None and len(raw) > max_bytes:
        raise fail(f"{path}:{number}: a line longer than {max_bytes:,} bytes is not a record")
      start, offset = offset, offset + len(raw)
      line = raw[3:] if number == 1 and raw.startswith(b"\xef\xbb\xbf") else raw  # as some editors write
      if line.strip():
        yield _parsed(number, start, line)


def _parsed(number: int, start: int, line: bytes) -> JsonLine:
  torn = not line.endswith(b"\n")
  try:
    text = line.decode("utf-8")
  except UnicodeDecodeError as e:
    where = f"byte {line[e.start]:#04x} at column {e.start + 1}"
    return JsonLine(number, start, None, f"not UTF-8 text ({where})", True, torn)
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    return JsonLine(number, start, None, f"not valid JSON ({e.msg})", False, torn)
  if not isinstance(value, dict):
    return JsonLine(number, start, None, f"expected a JSON object, got {type(value).__name__}", False, torn)
  return JsonLine(number, start, value, None, False, torn)


def _cut(path: str, offset: int) -> None:
  """Truncates path to offset bytes (process 0; a writer appending to it keeps working)."""
  if partitioning.is_main_process() and offset < os.path.getsize(path):
    with open(path, "r+b") as f:
      f.truncate(offset)


def read_jsonl(path: str) -> list[dict]:
  """Records already written to path ([] when it does not exist).

  Only a last line cut off by a kill (no newline at its end, not valid JSON) is dropped, and
  truncated away so the next append starts clean; any other bad line is a RecordsError naming
  file and line, and nothing is truncated.
  """
  return [record for _, record in numbered_records(path)]


def numbered_records(path: str) -> list[tuple[int, dict]]:
  """read_jsonl's records with their line numbers."""
  if not os.path.exists(path):
    return []
  records = []
  for line in json_lines(path, RecordsError):
    if line.error is None:
      records.append((line.number, line.value))
    elif line.torn:
      logging.warning("%s:%d: dropping a last line cut off by a kill", path, line.number)
      _cut(path, line.start)
    else:
      raise RecordsError(
        f"{path}:{line.number}: not a JSON record ({line.error}); "
        "fix or delete that line (the records after it are kept)"
      )
  return records


def digest(settings: dict) -> str:
  """A short digest of JSON-able settings, stored in each record they made."""
  return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Records:
  """An append-only JSONL file of records keyed by "id", resumable after a kill.

  with Records(path, made_with={"labeler": ..., "max_len": ...}) as out:
    todo = [x for x in items if x["id"] not in out.done]
    out.append([...])            # process 0 writes and flushes; others do nothing

  made_with names what produces the records; each record carries its digest ("made_with") and
  <path>.made_with.json holds the settings, so resuming with other settings (another labeler,
  prompt or max_len) is a RecordsError that says what changed instead of reusing stale records.
  Records with an "error" (e.g. a pair too long for the labeler), or for which stale(record)
  is true (a label whose context was cut at another max_len), are not done: a rerun drops them
  from the file and tries again. Ids are unique: a second record for an id is an error
  naming both lines. content (id -> a digest of what the record is computed from, e.g. the
  pair's texts: data.pair_digest) is stored in each record appended for that id, and a record
  whose id is in content with another digest (its item was edited since) is not done either.
  """

  def __init__(
    self,
    path: str,
    made_with: dict | None = None,
    content: dict[str, str] | None = None,
    stale: Callable[[dict], bool] | None = None,
  ):
    self.path = path
    self.made_with = made_with
    self.content = content
    numbered = numbered_records(path)
    self.records = [r for _, r in numbered]
    self._check_ids(numbered)
    if made_with is not None and not _checked_or_moved(path, self.records, made_with):
      self.records = []
    failed = [r for r in self.records if r.get("error")]
    if failed:
      logging.info("%s: %d records failed earlier (%s); retrying them", path, len(failed), failed[0]["error"][:80])
    changed = [r for r in self.records if content and r.get("id") in content and r.get("content") != content[r["id"]]]
    if changed:
      logging.warning("%s: %d records were made for other contents than their ids have now (first: %r, edited "
                      "since?); making them again", path, len(changed), changed[0]["id"])  # fmt: skip
    if stale is not None:  # only this run's items: records of others stay as they are
      redone = {id(r) for r in changed + failed}
      mine = (lambda r: r.get("id") in content) if content is not None else (lambda r: True)
      outdated = [r for r in self.records if id(r) not in redone and mine(r) and stale(r)]
      if outdated:
        logging.info("%s: %d records are made again (first: %r)", path, len(outdated), outdated[0].get("id"))
      changed += outdated
    if failed or changed:  # redone by this run: rewritten without them (atomically) before anything is appended
      redo = {id(r) for r in failed + changed}
      self.records = [r for r in self.records if id(r) not in redo]
      write_jsonl(path, self.records)
    self.done = {r["id"] for r in self.records if "id" in r}
    self._file = None

  def _check_ids(self, numbered) -> None:
    first = {}
    for number, r in numbered:
      rid = r.get("id")
      if rid in first:
        raise RecordsError(
          f"{self.path}: id {rid!r} is on line {first[rid]} and again on line {number}; each id must appear "
          "once: delete one of them"
        )
      first[rid] = number

  def __enter__(self) -> Records:
    if partitioning.is_main_process():
      self._file = open_for_append(self.path)
    return self

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def append(self, records: Iterable[dict]) -> None:
    if self.content is not None:
      records = [{**r, "content": self.content[r["id"]]} if r.get("id") in self.content else r for r in records]
    if self.made_with is not None:
      records = [{**r, "made_with": digest(self.made_with)} for r in records]
    records = list(records)
    for r in records:
      if r.get("id") in self.done:
        raise RecordsError(f"{self.path}: id {r['id']!r} was already written")
    self.records.extend(records)
    self.done.update(r["id"] for r in records if "id" in r and not r.get("error"))
    if self._file is not None:
      self._file.write("".join(json_line(r) for r in records))
      self._file.flush()


def settings_path(path: str) -> str:
  """Where the settings behind a records file's made_with digests are kept."""
  return path.removesuffix(".jsonl") + ".made_with.json"


def check_made_with(path: str, rows: Sequence[dict], made_with: dict) -> None:
  """RecordsError unless every row of path carries made_with's digest (saying which settings
  changed); records the settings beside the file when they match."""
  want = digest(made_with)
  stale = {r.get("made_with") for r in rows} - {want}
  if not stale:  # the settings beside the file, for a later run's error to say what changed
    if partitioning.is_main_process():
      write_json(settings_path(path), {want: made_with})
    return
  known = read_json(settings_path(path), {})
  before = next((known[d] for d in stale if d in known), None)
  if before is not None:
    changed = changed_settings(before, made_with)
  elif stale == {None}:
    changed = "records without settings, from an older version"
  else:
    changed = f"settings {sorted(d for d in stale if d)} whose description {settings_path(path)} does not hold"
  raise RecordsError(
    f"{path}: {sum(r.get('made_with') in stale for r in rows)} of its {len(rows)} records were made with other "
    f"settings than this run's ({changed}); to start over, delete or move {path}, or give this run another workdir"
  )


_REPLACE_STALE = contextvars.ContextVar("replace_stale", default=False)


@contextlib.contextmanager
def replacing_stale():
  """Within it, a records file made with other settings (check_made_with) is moved aside to
  <name>.stale-<n>.jsonl, said in one line, and made anew instead of refused: what a pipeline
  entry wants when it runs again because its settings, its inputs or an earlier entry changed."""
  token = _REPLACE_STALE.set(True)
  try:
    yield
  finally:
    _REPLACE_STALE.reset(token)


def _checked_or_moved(path: str, rows: Sequence[dict], made_with: dict) -> bool:
  """check_made_with; within replacing_stale a file made with other settings is moved aside
  (by process 0) instead: False then, and the caller starts with no records."""
  try:
    check_made_with(path, rows, made_with)
    return True
  except RecordsError as e:
    if not _REPLACE_STALE.get():
      raise
    stem, ext = os.path.splitext(path)
    n = next(n for n in range(1, 1_000_000) if not os.path.exists(f"{stem}.stale-{n}{ext}"))
    if partitioning.is_main_process() and os.path.exists(path):
      os.replace(path, f"{stem}.stale-{n}{ext}")
      if os.path.exists(settings_path(path)):  # what they were made with goes with them
        os.replace(settings_path(path), settings_path(f"{stem}.stale-{n}{ext}"))
      write_json(settings_path(path), {digest(made_with): made_with})
    logging.warning(
      "%s; moved it to %s and making them anew", str(e).split("; to start over")[0], f"{stem}.stale-{n}{ext}"
    )
    return False


def changed_settings(before: dict, now: dict) -> str:
  """'key: old -> new; ...' for the settings that differ (nested ones by their dotted key)."""
  flat_before, flat_now = _flat(before), _flat(now)
  return "; ".join(
    f"{k}: {flat_before.get(k)!r} -> {flat_now.get(k)!r}"
    for k in sorted(set(flat_before) | set(flat_now))
    if flat_before.get(k) != flat_now.get(k)
  )


def _flat(settings: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in settings.items():
    if isinstance(v, dict) and v:
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def reuse_jsonl(path: str, made_with: dict) -> list[dict] | None:
  """The records of a whole file written earlier by write_made (None when there is none), after
  check_made_with."""
  if not os.path.exists(path):
    return None
  rows = read_jsonl(path)
  return rows if _checked_or_moved(path, rows, made_with) else None


def write_made(path: str, rows: Sequence[dict], made_with: dict) -> list[dict]:
  """Writes a whole JSONL file whose rows carry made_with's digest (for reuse_jsonl); returns them."""
  rows = [{**r, "made_with": digest(made_with)} for r in rows]
  write_jsonl(path, rows)
  if partitioning.is_main_process():
    write_json(settings_path(path), {digest(made_with): made_with})
  return rows


def read_json(path: str, default=None):
  """The JSON object in path, or default when the file does not exist (yet)."""
  if not os.path.exists(path):
    return default
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise RecordsError(
      f"{path}: not a JSON file ({e}; cut off by a full disk or a kill, or edited): restore it, or move it away"
    ) from None


def open_for_append(path: str):
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


def keep_until(path: str, key: str, last: int) -> list[dict]:
  """Cuts a log of rows written in order of `key` (metrics by step, samples by iteration) back
  to the rows with key <= last, in place (a writer appending to it keeps working), and returns
  the rows kept. A resumed run calls it with its checkpoint's step, so the steps it trains
  again after a kill are not logged twice; a torn last line goes too."""
  if not os.path.exists(path):
    return []
  kept = []
  for line in json_lines(path, RecordsError):
    if line.error is not None and not line.torn:
      raise RecordsError(f"{path}:{line.number}: not a JSON record; fix or delete that line, or delete the file")
    row = line.value
    if row is None or (isinstance(row.get(key), (int, float)) and row[key] > last):
      _cut(path, line.start)  # a torn last line, or the first row beyond `last`
      break
    kept.append(row)
  return kept


def append_jsonl(path: str, rows: Sequence[dict]) -> None:
  """Appends rows to a JSONL log (samples, metrics); process 0 only."""
  if partitioning.is_main_process():
    with open_for_append(path) as f:
      f.write("".join(json_line(r) for r in rows))


def write_text(path: str, text: str) -> None:
  """Writes a whole file atomically (temporary file, then rename); process 0 only."""
  if not partitioning.is_main_process():
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:  # a full disk or a kill: no half-written file is left behind
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def write_jsonl(path: str, records: Sequence[dict]) -> None:
  """A whole JSONL file, atomically: a killed job never leaves half of it."""
  write_text(path, "".join(json_line(r) for r in records))


def write_json(path: str, obj, indent: int | None = 1) -> None:
  """A whole JSON file, atomically."""
  write_text(path, json.dumps(obj, indent=indent, default=str))


class WorkdirBusy(RuntimeError):
  """Another job holds the workdir."""


LOCK_FILE = ".rlaif_jax.lock"
_held: dict[str, list] = {}  # workdir -> [open lock file, depth]: re-entrant within a process


@contextlib.contextmanager
def workdir_lock(workdir: str | None):
  """Holds an exclusive lock on <workdir>/.rlaif_jax.lock while a job writes there, so two jobs
  never label, sample or train into one folder at once (each would redo the other's work).
  A second job fails at once with WorkdirBusy naming the process that holds it; the lock goes
  with the process (an flock), so a killed job leaves nothing to clean up. Re-entrant within
  a process (a pipeline's stage may share its folder). In a multi-host job process 0 takes it
  and tells the others, so every process stops alike."""
  if not workdir:
    yield
    return
  key = os.path.realpath(workdir)
  held, busy = None, None
  if partitioning.is_main_process():
    if key in _held:
      _held[key][1] += 1
    else:
      held, busy = _acquire(key)
  if jax.process_count() > 1:  # a collective: every process enters the lock the same number of times
    if partitioning.agree(busy is not None) and busy is None:
      busy = ""
  if busy is not None:
    raise WorkdirBusy(
      f"workdir {workdir} is in use by {busy or 'another job (process 0 of this job says so)'}; wait for that "
      "job to finish (or stop it), or give this job another workdir"
    )
  if held is not None:
    _held[key] = [held, 1]
  try:
    yield
  finally:
    if partitioning.is_main_process():
      _held[key][1] -= 1
      if not _held[key][1]:
        _held.pop(key)[0].close()  # releases the flock


def _acquire(key: str):
  """(the open, locked lock file, None), or (None, who holds it)."""
  import fcntl

  os.makedirs(key, exist_ok=True)
  f = open(os.path.join(key, LOCK_FILE), "a+", encoding="utf-8")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or "another process"
    f.close()
    return None, holder
  f.seek(0)
  f.truncate()
  started = datetime.datetime.now().isoformat(timespec="seconds")
  f.write(f"process {os.getpid()} on {socket.gethostname()} (started {started}: {' '.join(sys.argv)[:200]})\n")
  f.flush()
  return f, None
