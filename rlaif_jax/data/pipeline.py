"""From a registered seqio task to fixed-shape arrays: load, convert, count."""

from __future__ import annotations

import os

from rlaif_jax.data.converters import CONVERTERS


def is_file(task: str | None) -> bool:
  """A task argument naming a file rather than a registered seqio task (seqio names hold no '/')."""
  return isinstance(task, str) and (task.endswith((".jsonl", ".jsonl.gz")) or "/" in task or os.sep in task)


def seqio_task(task_name: str):
  """The registered seqio task (or mixture), or a ValueError saying what to do instead."""
  import seqio

  if is_file(task_name):
    raise ValueError(
      f"task {task_name!r} is a file: this stage reads registered seqio tasks (see tasks.register_prompts_task "
      "and register_candidates_task); label, rm, rl, rrhf, candidates and evaluate read files directly"
    )
  try:
    return seqio.get_mixture_or_task(task_name)
  except ValueError:
    raise ValueError(
      f"unknown seqio task {task_name!r}; `from rlaif_jax import tasks` registers the project's tasks"
    ) from None


def task_examples(task_name: str, split: str, shard_info=None) -> list[dict]:
  """Every tokenized example of a task's split, in order, as numpy dicts.

  shard_info (seqio.ShardInfo) makes each process read its own interleaved shard.
  Tasks are registered by importing `rlaif_jax.tasks` (the repository's tasks/ folder; every
  stage that reads a registered task imports it).
  """
  task = seqio_task(task_name)
  if split not in task.splits:
    raise ValueError(f"task {task_name!r} has no split {split!r}; splits: {list(task.splits)}")
  ds = task.get_dataset(None, split=split, shuffle=False, shard_info=shard_info)
  return list(ds.as_numpy_iterator())


def task_arrays(task_name: str, split: str, kind: str, max_len: int, pad_id: int = 0, shard_info=None):
  """(arrays, stats) of a task's split through the `kind` converter ('sft', 'pairs', 'prompts')."""
  if kind not in CONVERTERS:
    raise ValueError(f"unknown converter {kind!r}; converters: {sorted(CONVERTERS)}")
  examples = task_examples(task_name, split, shard_info)
  if not examples:
    raise ValueError(f"task {task_name!r} split {split!r} is empty")
  arrays, stats = CONVERTERS[kind](examples, max_len, pad_id)
  return arrays, stats
