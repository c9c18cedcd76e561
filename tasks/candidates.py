"""Tasks on the project's own formats: pairwise candidates and prompts-only files.

register_candidates_task("my_pairs", {"train": "/data/pairs_train.jsonl", "test": "/data/pairs_test.jsonl"})
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

from rlaif_jax.data import formats, paths
from rlaif_jax.tasks import common


def _read(parse, files: Mapping[str, str], split: str, skip_bad: bool):
  path = files[split]
  if not os.path.isabs(path) and not os.path.exists(path):
    path = paths.find(path)[0]
  return common.read_files([path], parse, skip_bad, f"{path}", unique_ids=True)


def register_candidates_task(name: str, files: Mapping[str, str], vocabulary=None) -> None:
  """A pair task over candidates jsonl files {id, input, response_a, response_b, human_choice?, metadata?}.

  files maps split names to paths (absolute, or relative to the data root).
  """
  common.register(
    name, "pairs", functools.partial(_read, formats.parse_candidate, dict(files)), tuple(files), vocabulary
  )


def register_prompts_task(name: str, files: Mapping[str, str], vocabulary=None) -> None:
  """A prompts task over jsonl files {id, input}."""
  common.register(
    name, "prompts", functools.partial(_read, formats.parse_prompt, dict(files)), tuple(files), vocabulary
  )


def register_all(vocabulary=None, suffix: str = "") -> None:
  register_candidates_task(
    f"candidates{suffix}", {"train": "candidates/train.jsonl", "test": "candidates/test.jsonl"}, vocabulary
  )
  register_prompts_task(f"prompts{suffix}", {"train": "prompts/train.jsonl", "test": "prompts/test.jsonl"}, vocabulary)
