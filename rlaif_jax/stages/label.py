"""The `label` stage: AI preference labels for a pair task or a candidates file.

Appends one JSON line per pair to <workdir>/labels.jsonl as it goes (flushed per chunk); a
rerun skips ids already there, so a killed job resumes without losing or repeating a label.
With human labels, writes report.md, report.json and calibration.png.
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax

from rlaif_jax import data, models, partitioning
from rlaif_jax.labeling import PromptConfig, load_exemplars
from rlaif_jax.labeling.report import write_report
from rlaif_jax.stages.scorers import build_labeler


def load_pairs(task: str | None, split: str, candidates_file: str | None) -> list[dict]:
  """Pairs {id, inputs, response_a, response_b, human_choice} from a seqio task or a file."""
  if candidates_file:
    records, _ = data.read_records(candidates_file, data.parse_candidate)
    return records
  if not task:
    raise ValueError("run_label needs a task or a candidates_file")
  return [
    {
      "id": data.as_text(ex["id"]),
      "inputs": data.as_text(ex["inputs_pretokenized"]),
      "response_a": data.as_text(ex["response_a_pretokenized"]),
      "response_b": data.as_text(ex["response_b_pretokenized"]),
      "human_choice": int(ex["human_choice"]),
    }
    for ex in data.task_examples(task, split)
  ]


def read_done(path: str) -> list[dict]:
  """Records already written; a last line cut off by a kill is dropped (and rewritten)."""
  if not os.path.exists(path):
    return []
  records, good_bytes = [], 0
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        break
      good_bytes += len(line.encode("utf-8"))
  with open(path, "r+b") as f:
    f.truncate(good_bytes)
  return records


def exemplars_path(path: str) -> str:
  """path as given, else (when relative and absent) relative to the repository, so the
  bundled 'rlaif_jax/labeling/exemplars.jsonl' is found from any working directory."""
  if os.path.isabs(path) or os.path.exists(path):
    return path
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return os.path.join(repo, path) if os.path.exists(os.path.join(repo, path)) else path


def checkpoint_name(checkpoint: str | None) -> str:
  """A readable labeler name: the run folder of a checkpoints folder, or random-init."""
  if not checkpoint:
    return "random-init"
  path = os.path.normpath(os.path.abspath(checkpoint))
  base = os.path.basename(path)
  return os.path.basename(os.path.dirname(path)) if base == "checkpoints" else base


def run_label(
  workdir: str,
  model_config: models.TransformerConfig,
  checkpoint: str | None = None,
  task: str | None = "hh_harmless_pairs",
  split: str = "test",
  candidates_file: str | None = None,
  prompt_config: PromptConfig = PromptConfig(task="harmlessness"),
  exemplars_file: str | None = None,
  max_len: int = 1024,
  batch_size: int = 8,
  chunk_size: int = 32,
  mesh_shape: dict | None = None,
  labeler_name: str | None = None,
  limit: int | None = None,
  seed: int = 0,
  pretrained: str | None = None,
) -> dict:
  """Labels every pair (or the first `limit`), resuming from labels.jsonl under workdir.

  pretrained: a preset name ("gemma3-270m"), GGUF file, Hugging Face folder or converted
  folder to label with (converted once into the cache); checkpoint then names fine-tuned
  weights of it, if any.
  """
  from tqdm.auto import tqdm

  os.makedirs(workdir, exist_ok=True)
  pairs = load_pairs(task, split, candidates_file)[:limit]
  exemplars = load_exemplars(exemplars_path(exemplars_file), prompt_config.task) if exemplars_file else []
  if prompt_config.num_exemplars > len(exemplars):
    raise ValueError(
      f"prompt_config.num_exemplars={prompt_config.num_exemplars} but exemplars_file={exemplars_file!r} holds "
      f"{len(exemplars)} for task {prompt_config.task!r}"
    )
  name = labeler_name or (checkpoint_name(checkpoint) if checkpoint or not pretrained else pretrained)
  mesh = partitioning.make_mesh(mesh_shape)
  labeler = build_labeler(model_config, checkpoint, max_len, batch_size, mesh, name, seed, pretrained)
  out_path = os.path.join(workdir, "labels.jsonl")
  done = read_done(out_path)
  done_ids = {r["id"] for r in done}
  todo = [p for p in pairs if p["id"] not in done_ids]
  logging.info("label: %d pairs, %d already labeled, %d to go -> %s", len(pairs), len(done_ids), len(todo), out_path)
  is_main = jax.process_index() == 0
  bar = tqdm(total=len(pairs), initial=len(pairs) - len(todo), desc="label", unit="pair", disable=not is_main)
  start = time.perf_counter()
  with open(out_path, "a", encoding="utf-8") as out:
    # Chunks have fixed boundaries in the pair list, so a resumed job forms the same batches
    # (and so the same numbers) as an uninterrupted one.
    for i in range(0, len(pairs), chunk_size):
      chunk = [p for p in pairs[i : i + chunk_size] if p["id"] not in done_ids]
      if not chunk:
        continue
      records = labeler.label_pairs(chunk, prompt_config, exemplars, seed=seed + i)
      if is_main:
        out.write("".join(json.dumps(r) + "\n" for r in records))
        out.flush()
      bar.update(len(chunk))
  bar.close()
  seconds = time.perf_counter() - start
  all_records = read_done(out_path)
  wanted = {p["id"] for p in pairs}
  records = [r for r in all_records if r["id"] in wanted]
  summary = {
    "labels": out_path,
    "pairs": len(records),
    "newly_labeled": len(todo),
    "pairs_per_sec": len(todo) / seconds if todo else None,
    "truncated_prompts": labeler.truncated,
    "prompt_variant": prompt_config.name,
    "labeler": name,
  }
  if is_main and any(r.get("human_choice") in (0, 1) for r in records):
    lengths = {p["id"]: (len(p["response_a"]), len(p["response_b"])) for p in pairs}
    report = write_report(records, workdir, f"AI labeler alignment: {name}, {prompt_config.name}", lengths)
    summary.update({k: v for k, v in report.items() if not isinstance(v, list)})
    summary["report"] = os.path.join(workdir, "report.md")
  return summary
