"""The `labelers` stage: several AI labelers label the same pairs (the paper's labeler-size study).

Each labeler (a ModelSource: a pretrained model of some size, or a checkpoint) labels the same
pairs with the same prompt under <workdir>/<name>/ (appended and resumed like the `label`
stage); <workdir>/report.md, report.json and labelers.png compare them: alignment with humans
(all pairs and high-confidence ones) and position bias, each with a 95% Wilson interval (over exemplar
draws: a normal interval of their mean), and a line defining each.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping

from rlaif_jax import data, models, partitioning, plots, records, writers
from rlaif_jax.labeling import Labeler, PromptConfig, jobs
from rlaif_jax.labeling.report import definitions, with_interval
from rlaif_jax.stages.base import stage

COLUMNS = jobs.HEADLINE


@stage
def run_labelers(
  workdir: str,
  labelers: Mapping[str, models.ModelSource],
  task: str | None = "tldr_comparisons",
  split: str = "validation",
  candidates_file: str | None = None,
  prompt_config: PromptConfig = PromptConfig(task="summarization"),
  exemplars_file: str | None = None,
  exemplar_draws: int = 0,
  max_len: int = 1024,
  batch_size: int = 8,
  chunk_size: int = 32,
  mesh_shape: dict | None = None,
  limit: int | None = None,
  sample: str = "random",
  seed: int = 0,
) -> dict:
  """Labels the same pairs (`limit` of them, chosen as in the label stage) with every labeler
  in `labelers` (name -> source), one at a time, and writes the comparison table."""
  if not labelers:
    raise ValueError("run_labelers.labelers is empty: give {name: ModelSource}")
  bad = [n for n in labelers if not n or "/" in n]
  if bad:
    raise ValueError(f"run_labelers.labelers: names {bad} must be non-empty, without '/'")
  pairs = jobs.choose_pairs(data.load_pairs(task, split, candidates_file), limit, sample, seed)
  pool = jobs.exemplar_pool(exemplars_file, prompt_config)
  mesh = partitioning.make_mesh(mesh_shape)
  results = {}
  for name, source in labelers.items():
    model = Labeler.from_source(source, mesh, name=name, max_len=max_len, batch_size=batch_size)
    info = {"prompt_variant": prompt_config.name, "labeler": name, "labeler_source": source.identity}
    where = os.path.join(workdir, name)
    results[name] = jobs.label_job(model, pairs, prompt_config, pool, where, chunk_size, seed, info, exemplar_draws)
    del model
    gc.collect()  # one labeler's parameters in memory at a time (its jitted methods refer back to it)
  summary = {"pairs": len(pairs), "prompt_variant": prompt_config.name, "labelers": _table_rows(results)}
  if partitioning.is_main_process():
    _write(workdir, summary)
  return summary | {"report": os.path.join(workdir, "report.md")}


def _table_rows(results: Mapping[str, dict]) -> dict:
  """name -> source, pairs, and each column's value with its interval (the mean over exemplar
  draws and its interval when the labelers were shown several draws)."""
  rows = {}
  for name, r in results.items():
    r = jobs.headline(r)
    row = {"source": r.get("labeler_source"), "pairs": r.get("pairs_with_human_labels", r.get("pairs"))}
    row["exemplar_draws"] = r.get("draws")  # its intervals are then over the draws
    for k in COLUMNS:
      row[k] = r.get(k)
      row[f"{k}_interval"] = r.get(f"{k}_interval")
    rows[name] = row
  return rows


def _write(workdir: str, summary: dict) -> None:
  rows = summary["labelers"]
  lines = [f"# AI labelers compared on the same {summary['pairs']} pairs ({summary['prompt_variant']})", ""]
  lines += ["| labeler | source | pairs | alignment | alignment (high confidence) | position bias |"]
  lines += ["| --- | --- | --- | --- | --- | --- |"]
  for name, row in rows.items():
    lines.append(
      f"| {name} | `{row['source']}` | {row['pairs']} | " + " | ".join(with_interval(row, k) for k in COLUMNS) + " |"
    )
  png = plots.plot_intervals(
    {name: {k: (row[k], row[f"{k}_interval"]) for k in COLUMNS if row[k] is not None} for name, row in rows.items()},
    os.path.join(workdir, "labelers.png"),
    "AI labelers: alignment and position bias (95% intervals)",
  )
  lines += ["", f"![labelers]({os.path.basename(png)})" if png else ""]
  drawn = {"draws": jobs.DRAWS_DEFINITION} if any(row.get("exemplar_draws") for row in rows.values()) else {}
  lines += writers.definitions_markdown({**definitions(("pairs_with_human_labels", *COLUMNS)), **drawn})
  records.write_json(os.path.join(workdir, "report.json"), summary, indent=2)
  records.write_text(os.path.join(workdir, "report.md"), "\n".join(lines) + "\n")
