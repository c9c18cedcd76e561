"""Examples as the stages use them: text records from a seqio task or a JSONL file.

Wherever a stage takes a task it also takes a file: a `task` that ends in .jsonl (or .jsonl.gz)
or holds a '/' is read as it is, without registering a seqio task. `{split}` in its path is
replaced by the split asked for ('data/pairs_{split}.jsonl'); a path without it is one split.
As for the registered tasks, lines that cannot be used are skipped with a warning counting
them by reason; a file with no usable line is an error naming its first bad line.
"""

from __future__ import annotations

import hashlib
import json

from rlaif_jax.data.encoder import as_text
from rlaif_jax.data.formats import parse_any_example, parse_any_pair
from rlaif_jax.data.io import read_records
from rlaif_jax.data.pipeline import is_file, task_examples


def file_for(task: str, split: str) -> str:
  """The file of a split: `{split}` in the path replaced."""
  return task.replace("{split}", split)


def source_name(task: str, split: str) -> str:
  """How reports name what was read: a task's 'name/split', or a file task's file."""
  return file_for(task, split) if is_file(task) else f"{task}/{split}"


def _read_file(path: str, parse) -> list[dict]:
  records, report = read_records(path, parse, skip_bad=True, unique_ids=True)
  if not records and report.num_skipped:
    read_records(path, parse, unique_ids=True)  # raises at the first bad line
  return records


def load_examples(task: str, split: str, limit: int | None = None) -> list[dict]:
  """{inputs, responses, human_scores} from a pair, SFT or prompts task or file (responses: the
  pair's two, the SFT target, or none; human_scores: 1 for the preferred response, else None)."""
  if is_file(task):
    records = _read_file(file_for(task, split), parse_any_example)
    return [{k: r[k] for k in ("inputs", "responses", "human_scores")} for r in records[:limit]]
  out = []
  for ex in task_examples(task, split)[:limit]:
    if "response_a_pretokenized" in ex:
      responses = [as_text(ex["response_a_pretokenized"]), as_text(ex["response_b_pretokenized"])]
      choice = int(ex["human_choice"])
      human = None if choice < 0 else ([1.0, 0.0] if choice == 0 else [0.0, 1.0])
    elif "targets_pretokenized" in ex:
      responses, human = [as_text(ex["targets_pretokenized"])], [1.0]
    else:
      responses, human = [], None
    out.append({"inputs": as_text(ex["inputs_pretokenized"]), "responses": responses, "human_scores": human})
  return out


def pair_digest(pair: dict) -> str:
  """What a pair's label is made from: a digest of its context and both responses (a label record
  stores it; labels are joined to pairs only where it matches). The human choice is not shown to
  the labeler: reports read it from the pairs as they are now."""
  shown = [pair["inputs"], pair["response_a"], pair["response_b"]]
  return hashlib.sha256(json.dumps(shown).encode()).hexdigest()[:16]


def load_pairs(task: str | None, split: str, candidates_file: str | None = None) -> list[dict]:
  """Pairs {id, inputs, response_a, response_b, human_choice} from a seqio task or a file (the
  candidates_file, else a task that is a file) in any of formats.PAIR_FORMS."""
  if candidates_file:  # written by the candidates stage (or by hand): every line must be good
    records, _ = read_records(candidates_file, parse_any_pair, unique_ids=True)
    return records
  if is_file(task):
    return _read_file(file_for(task, split), parse_any_pair)
  if not task:
    raise ValueError("pairs need a task or a candidates_file")
  return [
    {
      "id": as_text(ex["id"]),
      "inputs": as_text(ex["inputs_pretokenized"]),
      "response_a": as_text(ex["response_a_pretokenized"]),
      "response_b": as_text(ex["response_b_pretokenized"]),
      "human_choice": int(ex["human_choice"]),
      "metadata": as_text(ex["metadata"]) if "metadata" in ex else "{}",
    }
    for ex in task_examples(task, split)
  ]
