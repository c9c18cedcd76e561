"""A labeling job over many pairs: which pairs, appended and resumed records, reports.

`label_all` labels the pairs not yet in <workdir>/labels.jsonl (chunks with fixed boundaries,
so a resumed job forms the same batches), tags each record with the human rater's confidence
where the data has it, and writes the alignment report; `label_job` repeats it for seeded
random draws of few-shot exemplars and `draws_report` gives their mean with an interval
(`headline` reads either kind of summary). The `label` and `labelers` stages are thin
wrappers around these.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import numpy as np

from rlaif_jax import data, partitioning, records, writers
from rlaif_jax.evaluation import stats
from rlaif_jax.labeling.labeler import Labeler
from rlaif_jax.labeling.report import definitions, pair_lengths, with_interval, write_report
from rlaif_jax.trainer import Preempted, PreemptionFlag

SAMPLES = ("random", "first")
HEADLINE = ("alignment", "alignment_high_confidence", "position_bias")  # the numbers a study compares
DRAWS_DEFINITION = (
  "mean [95% interval] over draws: the mean of the draws' values -+ 1.96 x their standard deviation / sqrt(draws) "
  "(a normal interval of the mean; each draw's own bracket is its Wilson interval)"
)


def exemplars_path(path: str) -> str:
  """path as given, else (when relative and absent) relative to the repository, so the
  bundled 'rlaif_jax/labeling/exemplars.jsonl' is found from any working directory."""
  if os.path.isabs(path) or os.path.exists(path):
    return path
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return os.path.join(repo, path) if os.path.exists(os.path.join(repo, path)) else path


def exemplar_pool(exemplars_file: str | None, prompt_config) -> list:
  """The task's exemplars from the file (none without one); fails when fewer than shown."""
  from rlaif_jax.labeling.prompts import load_exemplars

  pool = load_exemplars(exemplars_path(exemplars_file), prompt_config.task) if exemplars_file else []
  if prompt_config.num_exemplars > len(pool):
    raise ValueError(
      f"prompt_config.num_exemplars={prompt_config.num_exemplars} but exemplars_file={exemplars_file!r} holds "
      f"{len(pool)} for task {prompt_config.task!r}"
    )
  return pool


def choose_pairs(pairs: list[dict], limit: int | None, sample: str, seed: int) -> list[dict]:
  """`limit` pairs: a seeded random sample (kept in dataset order) or the first ones. A pair
  whose id an earlier pair has (a dataset's duplicate; the project's own files refuse them) is
  dropped with a warning: labels are keyed by id."""
  if sample not in SAMPLES:
    raise ValueError(f"run_label.sample={sample!r}; one of {SAMPLES}")
  first = {p["id"]: i for i, p in reversed(list(enumerate(pairs)))}
  if len(first) < len(pairs):
    repeated = [p["id"] for i, p in enumerate(pairs) if first[p["id"]] != i]
    logging.warning("%d pairs repeat an earlier pair's id (first: %r); labeling the first of each", len(repeated),
                    repeated[0])  # fmt: skip
    pairs = [p for i, p in enumerate(pairs) if first[p["id"]] == i]
  if limit is None or limit >= len(pairs):
    return pairs
  if sample == "first":
    return pairs[:limit]
  keep = np.sort(np.random.default_rng(seed).choice(len(pairs), size=limit, replace=False))
  return [pairs[i] for i in keep]


def human_confidence(pair: dict) -> int | None:
  """The human rater's 1-9 confidence from a comparison's metadata (None when absent)."""
  try:
    value = json.loads(pair.get("metadata") or "{}").get("confidence")
  except (json.JSONDecodeError, AttributeError):
    return None
  return value if isinstance(value, int) else None


def label_all(model: Labeler, pairs, prompt_config, exemplars, workdir, chunk_size, seed, info) -> dict:
  """Labels the pairs not yet in <workdir>/labels.jsonl; the summary (and report when humans
  labeled the pairs)."""
  from tqdm.auto import tqdm

  content = {p["id"]: data.pair_digest(p) for p in pairs}  # an edited pair is labeled again
  settings = made_with(model, prompt_config, exemplars, seed, info)
  out = records.Records(os.path.join(workdir, "labels.jsonl"), settings, content, _other_max_len(model.max_len))
  todo = [p for p in pairs if p["id"] not in out.done]
  logging.info("label: %d pairs, %d already labeled, %d to go -> %s", len(pairs), len(pairs) - len(todo), len(todo),
               out.path)  # fmt: skip
  main = partitioning.is_main_process()
  bar = tqdm(total=len(pairs), initial=len(pairs) - len(todo), desc="label", unit="pair", disable=not main)
  start, truncated = time.perf_counter(), model.truncated
  with out, PreemptionFlag(f"finishing the labels of this chunk of {chunk_size} pairs") as preemption:
    # Chunks have fixed boundaries in the pair list, so a resumed job forms the same batches
    # (and so the same numbers) as an uninterrupted one. SIGTERM stops after the chunk.
    for i in range(0, len(pairs), chunk_size):
      if preemption.agreed():
        raise Preempted(len(out.done), f"saved {len(out.done)} labels to {out.path}")
      chunk = [p for p in pairs[i : i + chunk_size] if p["id"] not in out.done]
      if chunk:
        labeled = model.label_pairs(chunk, prompt_config, exemplars, seed=seed + i)
        confidence = {p["id"]: human_confidence(p) for p in chunk}
        labeled = [{**r, "max_len": model.max_len} for r in labeled]
        out.append({**r, "human_confidence": confidence[r["id"]]} if confidence[r["id"]] else r for r in labeled)
        bar.update(len(chunk))
  bar.close()
  seconds = time.perf_counter() - start
  now = {p["id"]: p for p in pairs}  # the human choices as the pairs say now (a label does not depend on them)
  labels = [_with_human(r, now[r["id"]]) for r in out.records if r["id"] in now]
  if labels and all(r.get("error") for r in labels):
    raise ValueError(
      f"{out.path}: none of the {len(labels)} pairs could be labeled ({labels[0]['error'][:200]}); raise "
      "run_label.max_len or shorten the pairs"
    )
  summary = {
    "labels": out.path,
    "pairs": len(labels),
    "newly_labeled": len(todo),
    "pairs_per_sec": len(todo) / seconds if todo else None,
    "truncated_prompts": model.truncated - truncated,
    **info,
  }
  if main and any(r.get("human_choice") in (0, 1) for r in labels):
    lengths = pair_lengths(pairs)
    title = f"AI labeler alignment: {info['labeler']}, {info['prompt_variant']}"
    report = write_report(labels, workdir, title, lengths, info)
    summary.update({k: v for k, v in report.items() if k != "calibration"})  # its bins are in report.json
    summary["report"] = os.path.join(workdir, "report.md")
  return summary


def _with_human(record: dict, pair: dict) -> dict:
  """A label record with its pair's human choice and confidence as the pairs file says now."""
  out = {k: v for k, v in record.items() if k not in ("human_choice", "human_confidence")}
  if pair.get("human_choice", -1) in (0, 1):
    out["human_choice"] = int(pair["human_choice"])
  if human_confidence(pair):
    out["human_confidence"] = human_confidence(pair)
  return out


def _other_max_len(max_len: int):
  """Whether a label record does not hold at max_len: it was made at another max_len where a
  context was cut (or a smaller one than a record made at a larger one, where it might be). A
  label made uncut holds at any larger max_len, so pairs too long before are retried at a larger
  one without labeling the rest again."""

  def stale(record: dict) -> bool:
    made_at = record.get("max_len")
    return made_at != max_len and (record.get("context_cut", True) or made_at is None or made_at > max_len)

  return stale


def made_with(model: Labeler, prompt_config, exemplars, seed: int, info: dict) -> dict:
  """What a label depends on: the labeler's weights, every prompt setting, the exemplars shown,
  the seed (rationales are sampled from it) and the chat format the prompts were wrapped in. The
  max_len is each record's own (label_all): a larger one keeps the labels whose contexts were whole.
  "records": 2 marks records that carry their pair's digest and max_len."""
  shown = [list(e) for e in exemplars] if prompt_config.num_exemplars else []  # Exemplar tuples
  chat = getattr(model, "chat", None)  # a labeler-like object without one shows plain text
  return {
    "labeler": info.get("labeler_source") or info["labeler"],
    **{f"prompt.{k}": v for k, v in dataclasses.asdict(prompt_config).items()},
    "records": 2,
    "exemplars": records.digest({"shown": shown}) if shown else None,
    "seed": seed,
    **({"chat_format": chat.identity} if chat else {}),  # plain-text prompts keep their older labels
  }


def label_job(model: Labeler, pairs, prompt_config, pool, workdir, chunk_size, seed, info, exemplar_draws=0) -> dict:
  """label_all with the exemplar pool in file order, or (exemplar_draws = k > 0) once per seeded
  random draw of it under <workdir>/draw_<d>/, summarized by draws_report."""
  if exemplar_draws <= 0:
    return label_all(model, pairs, prompt_config, pool, workdir, chunk_size, seed, info)
  draws = []
  for d in range(exemplar_draws):
    order = np.random.default_rng([seed, d]).permutation(len(pool))
    shown = [pool[i] for i in order]  # the first num_exemplars (not the pair's own input) are shown
    where = os.path.join(workdir, f"draw_{d}")
    draws.append(label_all(model, pairs, prompt_config, shown, where, chunk_size, seed, {**info, "draw": d}))
  return draws_report(draws, workdir, info)


def headline(summary: dict) -> dict:
  """A label job's summary with alignment, high-confidence alignment and position bias under
  their own names: a few-shot draws summary holds them as `<name>_mean` (and `<name>_interval`)."""
  return {**{k: summary[f"{k}_mean"] for k in HEADLINE if f"{k}_mean" in summary}, **summary}


def draws_report(draws: list[dict], workdir: str, info: dict) -> dict:
  """Each exemplar draw's alignment and position bias, and their mean over draws with a 95%
  normal interval of the mean (the spread per draw is in the table above it)."""
  keys = HEADLINE
  shown = ("draw", *keys, *(f"{k}_interval" for k in keys))
  summary = {**info, "draws": len(draws), "per_draw": [{k: d.get(k) for k in shown} for d in draws]}
  lines = [f"# Few-shot exemplar draws: {info['labeler']}, {info['prompt_variant']}", ""]
  lines += ["| draw | alignment | alignment (high confidence) | position bias |", "| --- | --- | --- | --- |"]
  lines += [f"| {d['draw']} | " + " | ".join(with_interval(d, k) for k in keys) + " |" for d in draws]
  cells = []
  for k in keys:
    values = np.asarray([d[k] for d in draws if d.get(k) is not None])
    if not len(values):
      cells.append("-")
      continue
    half = stats.normal_quantile(0.95) * (values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0)
    mean = float(values.mean())
    summary[f"{k}_mean"], summary[f"{k}_interval"] = mean, [mean - half, mean + half]
    cells.append(f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]")
  lines += [f"| mean [95% interval] over {len(draws)} draws | " + " | ".join(cells) + " |"]
  lines += writers.definitions_markdown({**definitions(keys), "draws": DRAWS_DEFINITION})
  if partitioning.is_main_process():
    records.write_json(os.path.join(workdir, "report.json"), summary, indent=2)
    records.write_text(os.path.join(workdir, "report.md"), "\n".join(lines) + "\n")
  return summary | {"report": os.path.join(workdir, "report.md")}
