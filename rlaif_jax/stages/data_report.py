"""The `data` stage: loads tasks through their converters and reports what it found.

For each task and split: examples, how many contexts (and responses or targets) were
truncated at the given length, and the lines skipped, with reasons.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from rlaif_jax import data, records
from rlaif_jax.stages.base import stage


def task_kind(task_name: str) -> str:
  features = data.seqio_task(task_name).output_features
  if "response_a" in features:
    return "pairs"
  return "sft" if "targets" in features else "prompts"


@stage
def run_data_report(
  tasks: Sequence[str] = ("tldr_sft", "tldr_comparisons", "hh_helpful_pairs", "hh_harmless_pairs", "hh_prompts"),
  max_len: int = 512,
  workdir: str | None = None,
) -> dict:
  """Counts per task and split; writes data_report.json under workdir when given."""

  from rlaif_jax import tasks as task_registry

  rows = []
  for name in tasks:
    kind = task_kind(name)
    for split in data.seqio_task(name).splits:
      try:
        examples = data.task_examples(name, split)
      except FileNotFoundError as e:  # a data root may hold only some splits
        rows.append({"task": name, "split": split, "examples": "missing", "skip_reasons": {}})
        logging.warning("%s/%s: %s", name, split, e)
        continue
      _, stats = data.CONVERTERS[kind](examples, max_len) if examples else (None, {"examples": 0})
      reports = task_registry.LOAD_REPORTS.get((name, split), [])
      skipped = {}
      for r in reports:
        for reason, n in r.skipped.items():
          skipped[reason] = skipped.get(reason, 0) + n
      rows.append(
        {
          "task": name,
          "split": split,
          **stats,
          "skipped": sum(skipped.values()),
          "skip_reasons": skipped,
          "duplicate_ids": sum(len(r.duplicate_ids) for r in reports),
          "identical_pairs": sum(len(r.identical_pairs) for r in reports),
        }
      )
  if workdir:
    records.write_json(
      os.path.join(workdir, "data_report.json"), {"data_root": data.data_root(), "max_len": max_len, "rows": rows}, 2
    )
  return {"data_root": data.data_root(), "max_len": max_len, "rows": rows}
