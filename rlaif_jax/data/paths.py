"""Where data lives: a data root with the original datasets' layout.

  <root>/tldr/{train,validation,test}.jsonl                   filtered Reddit TL;DR
  <root>/comparisons/*.json                                   summarize-from-feedback (jsonl)
  <root>/hh-rlhf/{helpful-base,harmless-base}/{train,test}.jsonl.gz
  <root>/candidates/*.jsonl, <root>/prompts/*.jsonl           the project's own formats

The root is, in order: set_data_root() (gin: run.data_root), $RLAIF_DATA_DIR, or the small
fixtures shipped with the package (same layout).
"""

from __future__ import annotations

import glob
import os

ENV_VAR = "RLAIF_DATA_DIR"
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
_root: str | None = None


def set_data_root(path: str | None) -> None:
  """Points every task at another data root (None returns to $RLAIF_DATA_DIR or the fixtures)."""
  global _root
  if path is not None and not os.path.isdir(path):
    raise FileNotFoundError(f"data root {path!r} is not a directory")
  _root = path


def data_root() -> str:
  return _root or os.environ.get(ENV_VAR) or FIXTURES


def find(*patterns: str) -> list[str]:
  """Files under the data root matching the first pattern that matches anything."""
  root = data_root()
  for pattern in patterns:
    hits = sorted(glob.glob(os.path.join(root, pattern)))
    if hits:
      return hits
  raise FileNotFoundError(f"no data file matches {' or '.join(patterns)} under the data root {root!r} (${ENV_VAR})")
