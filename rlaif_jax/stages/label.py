"""The `label` stage: AI preference labels for a pair task or a candidates file.

Appends one JSON line per pair to <workdir>/labels.jsonl as it goes (flushed per chunk); a
rerun skips ids already there, so a killed job resumes without losing or repeating a label.
With human labels, writes report.md, report.json and calibration.png.
"""

from __future__ import annotations

import logging
import os
import time

from rlaif_jax import data, models, partitioning, records
from rlaif_jax.labeling import Labeler, PromptConfig, load_exemplars
from rlaif_jax.labeling.report import write_report


def exemplars_path(path: str) -> str:
  """path as given, else (when relative and absent) relative to the repository, so the
  bundled 'rlaif_jax/labeling/exemplars.jsonl' is found from any working directory."""
  if os.path.isabs(path) or os.path.exists(path):
    return path
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return os.path.join(repo, path) if os.path.exists(os.path.join(repo, path)) else path


def run_label(
  workdir: str,
  labeler: models.ModelSource,
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
) -> dict:
  """Labels every pair (or the first `limit`) with the labeler (a ModelSource: a pretrained
  model, a fine-tuned checkpoint of one, or a trainer checkpoint), resuming from labels.jsonl."""
  from tqdm.auto import tqdm

  pairs = data.load_pairs(task, split, candidates_file)[:limit]
  exemplars = load_exemplars(exemplars_path(exemplars_file), prompt_config.task) if exemplars_file else []
  if prompt_config.num_exemplars > len(exemplars):
    raise ValueError(
      f"prompt_config.num_exemplars={prompt_config.num_exemplars} but exemplars_file={exemplars_file!r} holds "
      f"{len(exemplars)} for task {prompt_config.task!r}"
    )
  name = labeler_name or labeler.name
  mesh = partitioning.make_mesh(mesh_shape)
  model = Labeler.from_source(labeler, mesh, name=name, max_len=max_len, batch_size=batch_size)
  out = records.Records(os.path.join(workdir, "labels.jsonl"))
  todo = [p for p in pairs if p["id"] not in out.done]
  logging.info(
    "label: %d pairs, %d already labeled, %d to go -> %s", len(pairs), len(pairs) - len(todo), len(todo), out.path
  )
  main = partitioning.is_main_process()
  bar = tqdm(total=len(pairs), initial=len(pairs) - len(todo), desc="label", unit="pair", disable=not main)
  start = time.perf_counter()
  with out:
    # Chunks have fixed boundaries in the pair list, so a resumed job forms the same batches
    # (and so the same numbers) as an uninterrupted one.
    for i in range(0, len(pairs), chunk_size):
      chunk = [p for p in pairs[i : i + chunk_size] if p["id"] not in out.done]
      if chunk:
        out.append(model.label_pairs(chunk, prompt_config, exemplars, seed=seed + i))
        bar.update(len(chunk))
  bar.close()
  seconds = time.perf_counter() - start
  wanted = {p["id"] for p in pairs}
  labels = [r for r in out.records if r["id"] in wanted]
  summary = {
    "labels": out.path,
    "pairs": len(labels),
    "newly_labeled": len(todo),
    "pairs_per_sec": len(todo) / seconds if todo else None,
    "truncated_prompts": model.truncated,
    "prompt_variant": prompt_config.name,
    "labeler": name,
  }
  if main and any(r.get("human_choice") in (0, 1) for r in labels):
    lengths = {p["id"]: (len(p["response_a"]), len(p["response_b"])) for p in pairs}
    report = write_report(labels, workdir, f"AI labeler alignment: {name}, {prompt_config.name}", lengths)
    summary.update({k: v for k, v in report.items() if not isinstance(v, list)})
    summary["report"] = os.path.join(workdir, "report.md")
  return summary
