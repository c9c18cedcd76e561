"""Anthropic helpful/harmless (hh-rlhf) tasks: preference pairs, SFT on the chosen replies, and
dialogue prompts, per subset (helpful, harmless) and, for prompts, both subsets mixed."""

from __future__ import annotations

import functools

from rlaif_jax.data import formats, paths
from rlaif_jax.tasks import common

SPLITS = ("train", "test")
SUBSETS = {"helpful": "helpful-base", "harmless": "harmless-base"}


def _files(subset: str, split: str) -> list[str]:
  return paths.find(f"hh-rlhf/{subset}/{split}.jsonl.gz", f"hh-rlhf/{subset}/{split}.jsonl")


def _read_lines(parse, subset: str, split: str, skip_bad: bool):
  """One record per line of a subset's split (pairs, SFT)."""
  return common.read_files(_files(subset, split), parse, skip_bad, f"hh-rlhf/{subset}/{split}")


def _read_prompts(subsets: tuple[str, ...], split: str, skip_bad: bool):
  """Contexts of those of `subsets` present (at least one must be); a repeated context is kept once.

  The mixed task tolerates a data root holding one subset only; a per-subset task names its
  missing file.
  """
  present = {}
  for subset in subsets:
    try:
      present[subset] = _files(subset, split)
    except FileNotFoundError:
      continue
  if not present:
    _files(subsets[0], split)  # raises, naming what was looked for
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
    for kind, parse in (("pairs", formats.parse_hh_pair), ("sft", formats.parse_hh_sft)):
      read = functools.partial(_read_lines, parse, subset)
      common.register(f"hh_{short}_{kind}{suffix}", kind, read, SPLITS, vocabulary)
    read = functools.partial(_read_prompts, (subset,))
    common.register(f"hh_{short}_prompts{suffix}", "prompts", read, SPLITS, vocabulary)
  read = functools.partial(_read_prompts, tuple(SUBSETS.values()))
  common.register(f"hh_prompts{suffix}", "prompts", read, SPLITS, vocabulary)
