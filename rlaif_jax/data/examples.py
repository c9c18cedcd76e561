"""Examples as the stages use them: text records from a seqio task or a candidates file."""

from __future__ import annotations

from rlaif_jax.data.formats import parse_candidate
from rlaif_jax.data.io import read_records
from rlaif_jax.data.pipeline import as_text, task_examples


def load_examples(task: str, split: str, limit: int | None = None) -> list[dict]:
  """{inputs, responses, human_scores} from a pair, SFT or prompts task (responses: the pair's
  two, the SFT target, or none; human_scores: 1 for the preferred response, else None)."""
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


def load_pairs(task: str | None, split: str, candidates_file: str | None = None) -> list[dict]:
  """Pairs {id, inputs, response_a, response_b, human_choice} from a seqio task or a file."""
  if candidates_file:
    records, _ = read_records(candidates_file, parse_candidate, unique_ids=True)
    return records
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
