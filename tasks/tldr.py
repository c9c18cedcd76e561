"""Reddit TL;DR tasks: SFT (post -> summary), RL prompts, and human comparisons."""

from __future__ import annotations

import functools
import json

from rlaif_jax.data import formats, paths
from rlaif_jax.tasks import common

SPLITS = ("train", "validation", "test")


def _read_tldr(parse, split: str, skip_bad: bool):
  files = paths.find(f"tldr/{split}.jsonl", f"tldr/{split}.jsonl.gz")
  return common.read_files(files, parse, skip_bad, f"tldr/{split}")


def _read_comparisons(high_confidence_only: bool, split: str, skip_bad: bool):
  """OpenAI's files mix splits; a record's 'split' field ('train', 'valid1', 'valid2') decides."""
  files = paths.find("comparisons/*.json", "comparisons/*.jsonl", "comparisons/*.json.gz")
  parse = functools.partial(formats.parse_comparison, high_confidence_only=high_confidence_only)
  records, reports = common.read_files(files, parse, skip_bad, f"comparisons/{split}")
  wanted = ("train",) if split == "train" else ("valid1", "valid2")
  return [r for r in records if json.loads(r["metadata"])["split"] in wanted], reports


def register_all(vocabulary=None, suffix: str = "") -> None:
  common.register(f"tldr_sft{suffix}", "sft", functools.partial(_read_tldr, formats.parse_tldr_sft), SPLITS, vocabulary)
  common.register(
    f"tldr_prompts{suffix}", "prompts", functools.partial(_read_tldr, formats.parse_tldr_prompt), SPLITS, vocabulary
  )
  common.register(
    f"tldr_comparisons{suffix}",
    "pairs",
    functools.partial(_read_comparisons, False),
    ("train", "validation"),
    vocabulary,
  )
  common.register(
    f"tldr_comparisons_high_confidence{suffix}",
    "pairs",
    functools.partial(_read_comparisons, True),
    ("train", "validation"),
    vocabulary,
  )
