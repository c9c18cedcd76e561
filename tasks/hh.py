"""Anthropic helpful/harmless (hh-rlhf) tasks: preference pairs and dialogue prompts."""

from __future__ import annotations

import functools

from rlaif_jax.data import formats, paths
from tasks import common

SPLITS = ("train", "test")
SUBSETS = {"helpful": "helpful-base", "harmless": "harmless-base"}


def _files(subset: str, split: str) -> list[str]:
  return paths.find(f"hh-rlhf/{subset}/{split}.jsonl.gz", f"hh-rlhf/{subset}/{split}.jsonl")


def _read_pairs(subset: str, split: str, skip_bad: bool):
  return common.read_files(_files(subset, split), formats.parse_hh_pair, skip_bad, f"hh-rlhf/{subset}/{split}")


def _read_prompts(split: str, skip_bad: bool):
  """Contexts of the subsets present (both by default); a repeated context is kept once."""
  present = {}
  for subset in SUBSETS.values():
    try:
      present[subset] = _files(subset, split)
    except FileNotFoundError:
      continue
  if not present:
    _files(SUBSETS["helpful"], split)  # raises, naming what was looked for
  records, reports, seen = [], [], set()
  for subset, files in present.items():
    recs, reps = common.read_files(files, formats.parse_hh_prompt, skip_bad, f"hh-rlhf/{subset}/{split}")
    reports += reps
    for r in recs:
      if r["inputs"] not in seen:
        seen.add(r["inputs"])
        records.append({**r, "id": f"{subset}/{r['id']}"})
  return records, reports


def register_all(vocabulary=None, suffix: str = "") -> None:
  for short, subset in SUBSETS.items():
    common.register(f"hh_{short}_pairs{suffix}", "pairs", functools.partial(_read_pairs, subset), SPLITS, vocabulary)
  common.register(f"hh_prompts{suffix}", "prompts", _read_prompts, SPLITS, vocabulary)
