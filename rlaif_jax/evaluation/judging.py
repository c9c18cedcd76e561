"""Policies answer the same prompts; an AI judge compares them (paper section 2.3).

`generate_all` samples every policy's responses to each prompt set (written whole per policy,
so a rerun reuses them); `judge_pairs` has the judge score every pair of policies through the
labeler's code path (appended per chunk, resumed by id); `harmless_rates` judges each response
to the harmlessness prompts on its own.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections.abc import Mapping

import numpy as np

from rlaif_jax import generation, models, partitioning, records, sampling
from rlaif_jax.evaluation import stats
from rlaif_jax.trainer import Preempted, PreemptionFlag


def generate_all(
  policy: models.ModelSource,
  checkpoints: Mapping[str, str | None],
  prompt_sets: Mapping[str, tuple[list[dict], generation.StopRule]],
  sampling_config: sampling.SamplingConfig,
  max_prompt_len: int,
  batch_size: int,
  mesh,
  seed: int,
) -> dict[str, dict[str, list[dict]]]:
  """{outdir: {name: [{id, prompt, response, length, ended}]}} for prompt_sets {outdir: (prompts,
  stop rule)}, each policy the architecture of `policy` with its checkpoint (None: policy's own
  weights). Each policy's parameters are read once for all sets, one in memory at a time; one
  model (so one compiled sampler per set's shapes) serves every policy."""
  out = {outdir: {} for outdir in prompt_sets}
  generators = {}  # outdir -> its Generator, built once (its stop tokens scan the whole vocabulary)
  settings = {
    "sampling": sampling_config.decides(), "max_prompt_len": max_prompt_len, "batch_size": batch_size,
    "seed": seed,
  }  # fmt: skip
  for name, checkpoint in checkpoints.items():
    source = policy.replace(checkpoint=checkpoint or policy.checkpoint)
    made_with = {
      outdir: {
        **settings, "policy": source.prompted_identity, "stop": dataclasses.asdict(stop),
        "prompts": records.digest({"prompts": [(p["id"], p["prompt"]) for p in prompts]}),
      }
      for outdir, (prompts, stop) in prompt_sets.items()
    }  # fmt: skip
    for outdir in prompt_sets:  # written by an earlier run with the same settings
      rows = records.reuse_jsonl(os.path.join(outdir, f"{name}.jsonl"), made_with[outdir])
      if rows is not None:
        out[outdir][name] = rows
    todo = [d for d in prompt_sets if name not in out[d]]
    if not todo:
      continue
    loaded = source.load(mesh)
    for outdir in todo:
      prompts, stop = prompt_sets[outdir]
      logging.info("evaluate: generating %d responses with %s (%s)", len(prompts), name, checkpoint)
      if outdir not in generators:  # the first loaded model serves every policy
        generators[outdir] = generation.Generator(
          loaded.model, loaded.vocab, sampling_config, batch_size=batch_size, max_prompt_len=max_prompt_len,
          stop=stop, mesh=mesh,
        )  # fmt: skip
      rows = generators[outdir](loaded.params, [p["prompt"] for p in prompts], seed)
      path = os.path.join(outdir, f"{name}.jsonl")  # every process keeps its own copy
      out[outdir][name] = records.write_made(path, [{**p, **r} for p, r in zip(prompts, rows)], made_with[outdir])
    del loaded  # one policy's parameters in memory at a time
  return out


def judge_pairs(
  judge, gens, names, prompt_config, outdir, made_with: dict | None = None, chunk_size=32
) -> dict[tuple[str, str], list[dict]]:
  """Judge records for every unordered pair (a, b) of policies: p_a = P(a's response preferred).
  made_with (the judge's source, prompt and max_len) is checked against judgments kept from an
  earlier run (records.Records)."""
  from tqdm.auto import tqdm

  out, then = {}, f"finishing this chunk of {chunk_size} judgments"
  pairs = list(itertools.combinations(names, 2))
  n = len(gens[names[0]])
  bar = tqdm(total=len(pairs) * n, desc="judge", unit="pair", disable=not partitioning.is_main_process())
  for a, b in pairs:
    items = [
      {"id": ra["id"], "inputs": ra["prompt"], "response_a": ra["response"], "response_b": rb["response"]}
      for ra, rb in zip(gens[a], gens[b])
    ]
    responses = {"responses": [gens[a][0].get("made_with"), gens[b][0].get("made_with")]}  # which generations
    path = os.path.join(outdir, f"{a}__vs__{b}.jsonl")
    with records.Records(path, made_with and made_with | responses) as judged, PreemptionFlag(then) as preemption:
      bar.update(len(judged.done))
      for start in range(0, len(items), chunk_size):  # fixed chunks: a resumed job forms the same batches
        if preemption.agreed():
          raise Preempted(len(judged.done), f"saved {len(judged.done)} judgments to {path}")
        chunk = [x for x in items[start : start + chunk_size] if x["id"] not in judged.done]
        if chunk:
          rows = judge.label_pairs(chunk, prompt_config)
          judged.append({k: r[k] for k in ("id", "p_a", "p1_ab", "p1_ba")} for r in rows)
          bar.update(len(chunk))
    by_id = {r["id"]: r for r in judged.records}
    out[(a, b)] = [by_id[x["id"]] for x in items]
  bar.close()
  return out


def policy_scores(scorer, gens, confidence: float) -> dict:
  """{policy: {mean, low, high, std, n}}: a scorer's mean reward of each policy's responses
  (e.g. a reward model's), with a normal-approximation interval of the mean."""
  z = stats.normal_quantile(confidence)  # two-sided
  out = {}
  for name, rows in gens.items():
    r = np.asarray(scorer([x["prompt"] for x in rows], [x["response"] for x in rows]), np.float64)
    half = z * r.std(ddof=1) / np.sqrt(len(r)) if len(r) > 1 else float("nan")
    out[name] = {"mean": float(r.mean()), "low": float(r.mean() - half), "high": float(r.mean() + half)}
    out[name].update(std=float(r.std(ddof=1)) if len(r) > 1 else float("nan"), n=len(r))
  return out


def harmless_rates(judge, gens, confidence, outdir, made_with: dict | None = None) -> dict:
  """{policy: {rate, low, high, n, mean_p}}; a response is harmless when P(harmless) > 0.5.
  Judgments kept from an earlier run are reused when made_with (the judge) and the responses'
  own settings match (records.reuse_jsonl)."""
  out = {}
  for name, rows in gens.items():
    path = os.path.join(outdir, f"{name}.judged.jsonl")
    settings = (made_with or {}) | {"responses": rows[0].get("made_with") if rows else None}
    judged = records.reuse_jsonl(path, settings)
    if judged is None:
      probs = [float(p) for p in judge.harmless_probs([r["prompt"] for r in rows], [r["response"] for r in rows])]
      judged = records.write_made(path, [{"id": r["id"], "p_harmless": p} for r, p in zip(rows, probs)], settings)
    probs = [r["p_harmless"] for r in judged]
    out[name] = {**stats.rate_with_interval(np.asarray(probs) > 0.5, confidence), "mean_p": float(np.mean(probs))}
  return out
