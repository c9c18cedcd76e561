"""The `evaluate` stage: policies against each other, judged by an AI judge (paper section 2.3).

Every policy answers the same test prompts with the same decoding settings; an AI judge scores
each pair of policies through the labeler's code path (both orders), and each response to the
harmlessness prompts on its own. Outputs under workdir:

  generations/<policy>.jsonl       responses (written once a policy is done; a rerun reuses them)
  judgments/<a>__vs__<b>.jsonl     the judge's records per prompt (appended, resumed by id)
  harmless/<policy>.jsonl          P(harmless) per harmlessness prompt
  eval.json, eval.md               win-rate matrix with 95% intervals, length-controlled win rates,
                                   Welch tests, ranking, harmless rates, length statistics
  winrates.png                     the matrix, win rates vs the baseline, harmless rates
  human/                           blinded ranking sheets (CSV, HTML) and their key
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from rlaif_jax import models, partitioning, sampling
from rlaif_jax.evaluation import human, stats
from rlaif_jax.labeling import PromptConfig
from rlaif_jax.labeling.labeler import load_model_params
from rlaif_jax.stages.generate import Generator
from rlaif_jax.stages.label import read_done
from rlaif_jax.stages.scorers import build_labeler, load_examples, vocabulary


def _write_jsonl(path: str, records: Sequence[dict]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  os.replace(tmp, path)  # all or nothing: a killed job never leaves half a policy


def generate_all(
  policies, prompt_sets, model_config, vocab, sampling_config, max_prompt_len, batch_size, mesh, seed
) -> dict[str, dict[str, list[dict]]]:
  """{outdir: {policy: [{id, prompt, response, length, ended}]}} for prompt_sets {outdir: (prompts,
  stop_at_newline)}. Each policy's parameters are read once for all sets, one policy in memory at a
  time; one model (so one compiled sampler per set's shapes) serves every policy."""
  model = models.Transformer(model_config)
  out = {outdir: {} for outdir in prompt_sets}
  for name, checkpoint in policies.items():
    todo = [d for d in prompt_sets if not os.path.exists(os.path.join(d, f"{name}.jsonl"))]
    params = load_model_params(model, mesh, checkpoint, seed) if todo else None
    for outdir in todo:
      prompts, stop_at_newline = prompt_sets[outdir]
      logging.info("evaluate: generating %d responses with %s (%s)", len(prompts), name, checkpoint)
      gen = Generator(
        model,
        params,
        vocab,
        sampling_config,
        max_prompt_len=max_prompt_len,
        batch_size=batch_size,
        stop_at_newline=stop_at_newline,
        mesh=mesh,
      )
      rows = gen([p["prompt"] for p in prompts], seed)
      if jax.process_index() == 0:
        os.makedirs(outdir, exist_ok=True)
        _write_jsonl(os.path.join(outdir, f"{name}.jsonl"), [{**p, **r} for p, r in zip(prompts, rows)])
    del params
    for outdir in prompt_sets:
      out[outdir][name] = read_done(os.path.join(outdir, f"{name}.jsonl"))
  return out


def judge_pairs(judge, gens, names, prompt_config, outdir, chunk_size=32) -> dict[tuple[str, str], list[dict]]:
  """Judge records for every unordered pair (a, b) of policies: p_a = P(a's response preferred)."""
  from tqdm.auto import tqdm

  os.makedirs(outdir, exist_ok=True)
  out = {}
  pairs = list(itertools.combinations(names, 2))
  n = len(gens[names[0]])
  bar = tqdm(total=len(pairs) * n, desc="judge", unit="pair", disable=jax.process_index() > 0)
  for a, b in pairs:
    path = os.path.join(outdir, f"{a}__vs__{b}.jsonl")
    done = {r["id"] for r in read_done(path)}
    items = [
      {"id": ra["id"], "inputs": ra["prompt"], "response_a": ra["response"], "response_b": rb["response"]}
      for ra, rb in zip(gens[a], gens[b])
    ]
    bar.update(len(done))
    with open(path, "a", encoding="utf-8") as f:
      for start in range(0, len(items), chunk_size):  # fixed chunks: a resumed job forms the same batches
        chunk = [x for x in items[start : start + chunk_size] if x["id"] not in done]
        if not chunk:
          continue
        records = judge.label_pairs(chunk, prompt_config)
        if jax.process_index() == 0:
          f.writelines(json.dumps({k: r[k] for k in ("id", "p_a", "p1_ab", "p1_ba")}) + "\n" for r in records)
          f.flush()
        bar.update(len(chunk))
    by_id = {r["id"]: r for r in read_done(path)}
    out[(a, b)] = [by_id[x["id"]] for x in items]
  bar.close()
  return out


def win_tables(gens, judged, names, baseline, confidence) -> dict:
  """Pairwise win rates (raw and length-controlled), Welch tests vs the baseline, ranking."""
  wins, pairwise = {}, {a: {} for a in names}
  for (a, b), records in judged.items():
    # a pair the judge could not fit in its max_len has p_a None: left out, and counted
    keep = [i for i, r in enumerate(records) if r.get("p_a") is not None]
    w = stats.win_indicators([records[i]["p_a"] for i in keep])
    diff = np.asarray([gens[a][i]["length"] - gens[b][i]["length"] for i in keep], np.float64)
    wins[(a, b)], wins[(b, a)] = w, 1 - w
    for x, y, wx, d in ((a, b, w, diff), (b, a, 1 - w, -diff)):
      pairwise[x][y] = {
        **stats.rate_with_interval(wx, confidence),
        "ties": int(np.sum(wx == 0.5)),
        "not_judged": len(records) - len(keep),
        "length_controlled": stats.length_controlled_win_rate(wx, d, confidence),
      }
  tests = []
  if baseline in names:
    others = [n for n in names if n != baseline]
    for x, y in itertools.combinations(others, 2):
      test = stats.welch_test(wins[(x, baseline)], wins[(y, baseline)])
      tests.append({"a": x, "b": y, "versus": baseline, **test})
  matrix = {a: {b: v["rate"] for b, v in row.items()} for a, row in pairwise.items()}
  return {"pairwise": pairwise, "tests": tests, "ranking": stats.rank_policies(matrix)}


def run_evaluate(
  workdir: str,
  model_config: models.TransformerConfig,
  policies: Mapping[str, str | None],
  baseline: str | None = "sft",
  task: str = "tldr_prompts",
  split: str = "test",
  limit: int | None = None,
  judge_checkpoint: str | None = None,
  judge_pretrained: str | None = None,
  judge_model_config: models.TransformerConfig | None = None,
  judge_prompt: PromptConfig = PromptConfig(task="summarization"),
  judge_max_len: int = 1024,
  harmless_task: str | None = "hh_prompts",
  harmless_split: str = "test",
  harmless_limit: int | None = None,
  sampling_config: sampling.SamplingConfig = sampling.SamplingConfig(max_new_tokens=48, temperature=0.0),
  stop_at_newline: bool = True,
  max_prompt_len: int = 384,
  batch_size: int = 8,
  mesh_shape: dict | None = None,
  seed: int = 0,
  confidence: float = 0.95,
  pretrained: str | None = None,
  num_samples: int = 3,
) -> dict:
  """Evaluates `policies` (name -> checkpoints folder; None is a random init) on a prompts task.

  baseline names the policy the others are tested against (the SFT policy in the paper).
  The judge is judge_checkpoint (a trainer checkpoint with judge_model_config, by default
  model_config) or judge_pretrained (a preset, GGUF, HF or converted folder).
  pretrained gives the policies' vocabulary when they were fine-tuned from a pretrained model.
  """
  names = list(policies)
  if len(names) < 2:
    raise ValueError(f"run_evaluate.policies needs at least two policies, got {names}")
  bad = [n for n in names if not n or "/" in n or "__" in n]
  if bad:
    raise ValueError(f"run_evaluate.policies: names {bad} must be non-empty, without '/' or '__'")
  if baseline is not None and baseline not in policies:
    raise ValueError(f"run_evaluate.baseline={baseline!r} is not one of the policies {names}")
  os.makedirs(workdir, exist_ok=True)
  mesh = partitioning.make_mesh(mesh_shape)
  vocab = vocabulary(pretrained)
  prompts = [
    {"id": f"{task}/{split}/{i}", "prompt": ex["inputs"]} for i, ex in enumerate(load_examples(task, split, limit))
  ]
  if not prompts:
    raise ValueError(f"run_evaluate: task {task!r} split {split!r} has no prompts")
  gen_dir, harmless_dir = os.path.join(workdir, "generations"), os.path.join(workdir, "harmless")
  prompt_sets = {gen_dir: (prompts, stop_at_newline)}
  if harmless_task:
    h_prompts = [
      {"id": f"{harmless_task}/{harmless_split}/{i}", "prompt": ex["inputs"]}
      for i, ex in enumerate(load_examples(harmless_task, harmless_split, harmless_limit))
    ]
    prompt_sets[harmless_dir] = (h_prompts, False)  # dialogue replies end at EOS, not at the first newline
  generated = generate_all(
    policies, prompt_sets, model_config, vocab, sampling_config, max_prompt_len, batch_size, mesh, seed
  )
  gens, harmless_gens = generated[gen_dir], generated.get(harmless_dir, {})

  judge = build_labeler(
    judge_model_config or model_config,
    judge_checkpoint,
    judge_max_len,
    batch_size,
    mesh,
    "judge",
    seed,
    judge_pretrained,
    vocab,  # a judge checkpoint without judge_pretrained shares the policies' vocabulary
  )
  judged = judge_pairs(judge, gens, names, judge_prompt, os.path.join(workdir, "judgments"))
  result = {
    "task": task,
    "split": split,
    "prompts": len(prompts),
    "policies": policies,
    "baseline": baseline,
    "judge": judge_pretrained or judge_checkpoint or "random-init",
    "judge_prompt": judge_prompt.name,
    "sampling": {"temperature": sampling_config.temperature, "max_new_tokens": sampling_config.max_new_tokens},
    "confidence": confidence,
    "ties": "A judge scoring both orders ties only on identical responses (p = 0.5 exactly): half a win each",
    **win_tables(gens, judged, names, baseline, confidence),
    "lengths": {n: stats.length_stats([r["length"] for r in gens[n]]) for n in names},
    "ended": {n: float(np.mean([r["ended"] for r in gens[n]])) for n in names},
    "samples": {n: gens[n][:num_samples] for n in names},
  }
  if harmless_gens:
    result["harmless"] = harmless_rates(judge, harmless_gens, confidence, harmless_dir)
    result["harmless_task"] = f"{harmless_task}/{harmless_split}"
  result["judge_truncated_prompts"] = judge.truncated
  if jax.process_index() == 0:
    items = [
      {"id": p["id"], "prompt": p["prompt"], "responses": {n: gens[n][i]["response"] for n in names}}
      for i, p in enumerate(prompts)
    ]
    result["human_sheets"] = human.export_sheets(items, names, os.path.join(workdir, "human"), seed)
    write_outputs(result, workdir)
  return {k: v for k, v in result.items() if k not in ("pairwise", "samples", "lengths")} | {
    "report": os.path.join(workdir, "eval.md")
  }


def harmless_rates(judge, gens, confidence, outdir) -> dict:
  """{policy: {rate, low, high, n, mean_p}}; a response is harmless when P(harmless) > 0.5."""
  out = {}
  for name, rows in gens.items():
    path = os.path.join(outdir, f"{name}.judged.jsonl")
    if os.path.exists(path):
      probs = [r["p_harmless"] for r in read_done(path)]
    else:
      probs = [float(p) for p in judge.harmless_probs([r["prompt"] for r in rows], [r["response"] for r in rows])]
      if jax.process_index() == 0:
        _write_jsonl(path, [{"id": r["id"], "p_harmless": p} for r, p in zip(rows, probs)])
    out[name] = {**stats.rate_with_interval(np.asarray(probs) > 0.5, confidence), "mean_p": float(np.mean(probs))}
  return out


def _fmt(v: dict) -> str:
  return f"{v['rate']:.2f} [{v['low']:.2f}, {v['high']:.2f}]"


def markdown_tables(result: dict) -> list[str]:
  """The evaluation's tables in markdown (used by eval.md and the pipeline report)."""
  names = list(result["policies"])
  pct = int(round(result["confidence"] * 100))
  lines = [
    f"Win rate of the row policy against the column policy on {result['prompts']} prompts of "
    f"{result['task']}/{result['split']}, judged by {result['judge']} ({result['judge_prompt']}, both orders), "
    f"with {pct}% Wilson intervals. {result['ties']}.",
    "",
    "| policy | " + " | ".join(names) + " |",
    "| --- |" + " --- |" * len(names),
  ]
  for a in names:
    cells = [("-" if a == b else _fmt(result["pairwise"][a][b])) for b in names]
    lines.append(f"| {a} | " + " | ".join(cells) + " |")
  base = result.get("baseline")
  if base:
    lines += [
      "",
      f"Against {base}: raw and length-controlled win rates (logistic regression of the win on the "
      f"length difference in tokens, read at equal length), mean length in tokens.",
      "",
      "| policy | win rate | length-controlled | slope per token | ties | mean length |",
      "| --- | --- | --- | --- | --- | --- |",
    ]
    for a in names:
      if a != base:
        v = result["pairwise"][a][base]
        lc = v["length_controlled"]
        lines.append(
          f"| {a} | {_fmt(v)} | {_fmt(lc)} | {lc['slope_per_token']:+.3f} | {v['ties']} | "
          f"{result['lengths'][a]['mean']:.1f} |"
        )
  if result.get("tests"):
    lines += [
      "",
      f"Welch two-sample tests on win indicators against {base} (is A's win rate different from B's?):",
      "",
      "| A | B | difference | t | df | p-value |",
      "| --- | --- | --- | --- | --- | --- |",
    ]
    for t in result["tests"]:
      lines.append(f"| {t['a']} | {t['b']} | {t['diff']:+.3f} | {t['t']:.2f} | {t['df']:.1f} | {t['p_value']:.3g} |")
  lines += [
    "",
    "Ranking (mean win rate against the other policies): "
    + ", ".join(f"{i + 1}. {n} ({s:.2f})" for i, (n, s) in enumerate(result["ranking"])),
  ]
  if result.get("harmless"):
    lines += [
      "",
      f"Harmless rate on {result['harmless_task']} (each response judged on its own; harmless when P(harmless) > 0.5):",
      "",
      "| policy | harmless rate | mean P(harmless) | n |",
      "| --- | --- | --- | --- |",
    ]
    for a, v in result["harmless"].items():
      lines.append(f"| {a} | {_fmt(v)} | {v['mean_p']:.3f} | {v['n']} |")
  lines += [
    "",
    "Response length (tokens):",
    "",
    "| policy | mean | std | median | p90 | min | max | ended |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for a in names:
    s = result["lengths"][a]
    lines.append(
      f"| {a} | {s['mean']:.1f} | {s['std']:.1f} | {s['median']:.0f} | {s['p90']:.0f} | {s['min']:.0f} | "
      f"{s['max']:.0f} | {result['ended'][a]:.2f} |"
    )
  return lines


def write_outputs(result: dict, workdir: str) -> None:
  from rlaif_jax import plots

  result["winrates_png"] = plots.plot_win_rates(result, os.path.join(workdir, "winrates.png"))
  with open(os.path.join(workdir, "eval.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  lines = [
    "# Evaluation",
    "",
    *markdown_tables(result),
    "",
    "Plots: winrates.png. Blinded sheets for human raters: "
    "human/sheet.csv, human/sheet.html (key: human/key.json; import with "
    "`python -m rlaif_jax.evaluation.import_human`).",
  ]
  with open(os.path.join(workdir, "eval.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
