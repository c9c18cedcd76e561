"""Reddit TL;DR records (jsonl: subreddit, title, post, summary) and their prompt format."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator

TLDR_FIELDS = ("subreddit", "title", "post", "summary")
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "tldr_fixture.jsonl")


def open_text(path: str):
  """Opens .jsonl or .jsonl.gz for reading text."""
  if path.endswith(".gz"):
    return gzip.open(path, "rt", encoding="utf-8")
  return open(path, encoding="utf-8")


def read_jsonl(path: str, required: tuple[str, ...] = ()) -> Iterator[dict]:
  """Yields the records of a jsonl(.gz) file; bad lines raise naming file, line and field."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"data file {path!r} does not exist")
  with open_text(path) as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
      if not isinstance(record, dict):
        raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
      for field in required:
        if not isinstance(record.get(field), str):
          raise ValueError(f"{path}:{line_no}: field {field!r} is missing or not a string")
      yield record


def tldr_prompt(record: dict) -> str:
  """The SFT input of a TL;DR record: 'SUBREDDIT: r/...\\nTITLE: ...\\nPOST: ...\\nTL;DR:'."""
  return f"SUBREDDIT: r/{record['subreddit']}\nTITLE: {record['title']}\nPOST: {record['post']}\nTL;DR:"


def read_tldr(path: str = FIXTURE) -> list[tuple[str, str]]:
  """(prompt, summary) pairs; the summary is prefixed with a space, as it follows 'TL;DR:'."""
  return [(tldr_prompt(r), " " + r["summary"].strip()) for r in read_jsonl(path, TLDR_FIELDS)]
