"""The `report` stage: one report.md / report.json for a whole pipeline run.

It reads what the other stages left in their folders (nothing is recomputed): SFT summary,
labeler alignment per prompting technique, reward-model accuracies, RL and RRHF curves, and the
evaluation's win rates, harmless rates, lengths and samples; it draws rl_curves.png (every RL
run's reward and KL on shared axes) and links each stage's own plots.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from rlaif_jax import records, reward, writers
from rlaif_jax.evaluation import tables
from rlaif_jax.labeling import jobs
from rlaif_jax.labeling.report import definitions as label_definitions
from rlaif_jax.labeling.report import with_interval
from rlaif_jax.stages.base import stage

BASELINES = (
  "What each number must beat: an alignment or reward-model accuracy against human labels beats chance (0.5) and "
  "the length rules beside it (prefer-longer, prefer-shorter: how often the longer or shorter response is the "
  "human-preferred one on the same pairs); a win rate beats 0.5, and its length-controlled value (LC, read at "
  "equal length) says how much of it length alone explains."
)
STAGE_LOG = "stages.json"  # written by the pipeline runner: per stage, seconds and summary
ALIGNMENT_COUNTS = ("pairs_with_human_labels", "not_labeled")
ALIGNMENT_RATES = ("alignment", "alignment_high_confidence", "alignment_order_ab", "alignment_order_ba")
ALIGNMENT_RATES += ("position_bias", "ai_prefers_a", "humans_prefer_a", "baseline_prefer_shorter")
RM_KEYS = ("label_source", "train_pairs", "eval_pairs", "eval_accuracy_human", "eval_baseline_prefer_longer")
RM_KEYS += ("eval_accuracy_ai", "steps")
RM_RATES = ("eval_accuracy_human", "eval_baseline_prefer_longer", "eval_accuracy_ai")
POLICY_DEFINITIONS = {
  "reward": "reward start -> end (RL): the mean raw reward (the scorer's, before normalization and the KL penalty) "
  "of the first and the last rollout batch",
  "kl": "KL (RL): the mean over the last rollout batch of sum_t (log pi(y_t) - log pi_SFT(y_t)) over the response "
  "tokens, a sample estimate of the sequence KL to the SFT policy",
  "explained_variance": "explained variance (RL, last batch): 1 - Var(G - V) / Var(G) over the response tokens of "
  "the last rollout batch, G the return and V the value baseline; 1 is a perfect baseline, 0 no better than a "
  "constant, below 0 worse; - for estimators without a value model",
  "rollout_accuracy": "rollout_accuracy start -> end (OAIF): the share of the pairs the policy sampled in the first "
  "and the last iteration where its implicit preference, beta log(pi / pi_SFT) of one response minus the other's "
  "(before that iteration's update), agrees with the AI labeler's choice",
  "implicit": "implicit-reward accuracy (DPO, IPO): on the held-out pairs, the share with a human (or AI) label "
  "where the policy's implicit preference sigmoid(beta (log pi(A)/pi_SFT(A) - log pi(B)/pi_SFT(B))) > 0.5 chooses "
  "the label's response; KL: the mean of sum_t (log pi - log pi_SFT) over responses the final policy sampled to "
  "held-out prompts",
  "policy_score": "policy score (RRHF): the scorer's mean reward of the policy's own samples in the first round -> "
  "of the final policy's samples",
}


def _num(v, fmt=".3f") -> str:
  return "-" if v is None else format(v, fmt) if isinstance(v, float) else str(v)


def _rel(path: str, root: str) -> str:
  return os.path.relpath(path, root)


def alignment_section(label_dirs: Mapping[str, str]) -> tuple[list[str], dict]:
  rows, out = [], {}
  for name, d in label_dirs.items():
    rep = records.read_json(os.path.join(d, "report.json"))
    if rep is None:
      continue
    rep = jobs.headline(rep)  # exemplar draws: their mean
    keys = ALIGNMENT_COUNTS + ("pairs_high_confidence",) + ALIGNMENT_RATES
    out[name] = {k: rep.get(k) for k in keys + tuple(f"{k}_interval" for k in ALIGNMENT_RATES) + ("labeler_source",)}
    out[name]["exemplar_draws"] = rep.get("draws")  # its intervals are then over the draws
    cells = [_num(rep.get(k)) for k in ALIGNMENT_COUNTS]
    cells += [with_interval(rep, "alignment"), _num(rep.get("pairs_high_confidence"))]
    cells += [with_interval(rep, k) for k in ALIGNMENT_RATES[1:]]
    rows.append(f"| {name} | " + " | ".join(cells) + " |")
  if not rows:
    return [], out
  head = "| technique | pairs | not labeled (too long) | alignment | high-confidence pairs | alignment on them | "
  head += "order AB | order BA | position bias | AI prefers A | humans prefer A | prefer-shorter baseline |"
  note = "High-confidence pairs: human confidence 1, 2, 8 or 9 (the subset the paper's summarization studies use). "
  note += "Brackets: 95% intervals."
  return ["## AI labeler alignment per prompting technique", "", note, "", head, "|" + " --- |" * 12, *rows, ""], out


def rm_section(rm_dirs: Mapping[str, str], root: str) -> tuple[list[str], dict]:
  rows, out = [], {}
  for name, d in rm_dirs.items():
    rep = records.read_json(os.path.join(d, "report.json"))
    if rep is None:
      continue
    out[name] = {k: rep.get(k) for k in RM_KEYS + tuple(f"{k}_interval" for k in RM_RATES)}
    cells = [with_interval(rep, k) if k in RM_RATES else _num(rep.get(k)) for k in RM_KEYS]
    rows.append(f"| {name} | " + " | ".join(cells) + f" | {_rel(os.path.join(d, 'curves.png'), root)} |")
  if not rows:
    return [], out
  return [
    "## Reward models",
    "",
    "Accuracy on held-out pairs: against human labels, and against the AI labeler's labels where those pairs were "
    "AI-labeled (distillation accuracy). Brackets: 95% intervals.",
    "",
    *_same_pairs(rm_dirs),
    "| reward model | labels | train pairs | eval pairs | accuracy vs human | prefer-longer baseline (same pairs) | "
    "accuracy vs AI | steps | curves |",
    "|" + " --- |" * 9,
    *rows,
    "",
  ], out


def _same_pairs(rm_dirs: Mapping[str, str]) -> list[str]:
  """Says whether the reward models trained (and were evaluated) on the same pairs: the paper's
  RLAIF-vs-RLHF comparison changes only the labels."""
  reps = {n: records.read_json(os.path.join(d, "report.json")) or {} for n, d in rm_dirs.items()}
  reps = {n: r for n, r in reps.items() if r.get("train_pairs_digest")}
  if len(reps) < 2:
    return []
  lines = []
  for what, key, count in (
    ("trained", "train_pairs_digest", "train_pair_ids"),
    ("evaluated", "eval_pairs_digest", "eval_pairs"),
  ):
    if len({r.get(key) for r in reps.values()}) == 1:
      sizes = sorted({r.get(count) for r in reps.values()} - {None})
      who = "Both reward models" if len(reps) == 2 else f"All {len(reps)} reward models"
      lines.append(f"{who} were {what} on the same pairs ({', '.join(map(str, sizes))}).")
    else:
      lines.append(f"**The reward models were {what} on different pairs: comparing them mixes pairs and labels.**")
  if not any(line.startswith("**") for line in lines):
    lines.append("Only their training labels differ.")
  return [" ".join(lines), ""]


def judge_lines(
  ev: dict, label_dirs: Mapping[str, str], rl_dirs: Mapping[str, str], rrhf_dirs, dpo_dirs=None
) -> list[str]:
  """Names the judge and warns when it is the AI labeler or a reward source of a judged policy."""
  judge = ev.get("judge_source")
  lines = [f"Judge: {ev.get('judge')} (`{judge}`), prompt {ev.get('judge_prompt')}."]
  roles = []
  for name, d in label_dirs.items():
    if judge and (records.read_json(os.path.join(d, "report.json")) or {}).get("labeler_source") == judge:
      roles.append(f"the AI labeler of {name}")
  for name, d in {**rl_dirs, **rrhf_dirs, **(dpo_dirs or {})}.items():
    if judge and (records.read_json(os.path.join(d, "summary.json")) or {}).get("reward_source") == judge:
      roles.append(f"the reward source of {name}")
  if roles:
    lines += ["", f"**Warning: the judge is also {', '.join(roles)}; it favours the policies it trained.**"]
  return lines + [""]


def policy_section(
  rl_dirs: Mapping[str, str], rrhf_dirs: Mapping[str, str], root: str, dpo_dirs: Mapping[str, str] | None = None
) -> tuple[list[str], dict]:
  out, rows = {}, []
  for name, d in rl_dirs.items():
    s = records.read_json(os.path.join(d, "summary.json"))
    if s is None:
      continue
    out[name] = {k: s.get(k) for k in ("iterations", "reward_first", "reward_last", "kl_last", "kl_coef_final")}
    key = "explained_variance_last"  # a run from before summaries recorded it: its last logged value
    ev = s[key] if key in s else _last_logged(d, "explained_variance")
    out[name]["explained_variance_last"] = ev
    metric = s.get("progress_metric", "reward_raw_mean")
    progress = "reward" if metric == "reward_raw_mean" else metric
    rows.append(
      f"| {name} | {s.get('method', 'RL')} | {s.get('iterations')} iterations | {progress} "
      f"{_num(s.get('reward_first'))} -> {_num(s.get('reward_last'))}, KL {_num(s.get('kl_last'))} | {_num(ev)} | "
      f"{_rel(os.path.join(d, 'curves.png'), root)} |"
    )
  for name, d in rrhf_dirs.items():
    s = records.read_json(os.path.join(d, "summary.json"))
    if s is None:
      continue
    out[name] = {k: s.get(k) for k in ("steps", "policy_score_first_round", "policy_score_final")}
    rows.append(
      f"| {name} | RRHF | {s.get('steps')} steps | policy score {_num(s.get('policy_score_first_round'))} -> "
      f"{_num(s.get('policy_score_final'))} | - | {_rel(os.path.join(d, 'curves.png'), root)} |"
    )
  for name, d in (dpo_dirs or {}).items():
    s = records.read_json(os.path.join(d, "summary.json"))
    if s is None:
      continue
    keys = ("steps", "loss", "beta", "label_source", "eval_accuracy_human", "eval_accuracy_ai", "eval_kl_to_reference")
    out[name] = {k: s.get(k) for k in keys}
    found = [f"vs {who} {_num(s[f'eval_accuracy_{k}'])}" for k, who in (("human", "human"), ("ai", "AI"))
             if s.get(f"eval_accuracy_{k}") is not None]  # fmt: skip
    rows.append(
      f"| {name} | {str(s.get('loss')).upper()} on {s.get('label_source')} labels | {s.get('steps')} steps | "
      f"implicit-reward accuracy {', '.join(found) or '-'}, KL {_num(s.get('eval_kl_to_reference'))} | - | "
      f"{_rel(os.path.join(d, 'curves.png'), root)} |"
    )
  if not rows:
    return [], out
  png = plot_rl_runs(rl_dirs, os.path.join(root, "rl_curves.png"))
  lines = [
    "## Policy training",
    "",
    "| policy | method | length | start -> end | explained variance | curves |",
    "| --- | --- | --- | --- | --- | --- |",
  ]
  lines += rows + [""] + ([f"![RL curves]({_rel(png, root)})", ""] if png else [])
  return lines, out


def _last_logged(run_dir: str, key: str) -> float | None:
  path = os.path.join(run_dir, "metrics.jsonl")
  rows = writers.read_jsonl_metrics(path) if os.path.exists(path) else []
  return next((r[key] for r in reversed(rows) if key in r), None)


def plot_rl_runs(rl_dirs: Mapping[str, str], path: str) -> str | None:
  """Reward (raw), KL to SFT and response length of every RL run, one line per run."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  runs = {}
  for name, d in rl_dirs.items():
    metrics = os.path.join(d, "metrics.jsonl")
    if os.path.exists(metrics):
      runs[name] = writers.read_jsonl_metrics(metrics)
  if not runs:
    return None
  keys = ("reward_raw_mean", "kl", "response_length")
  fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5))
  for ax, key in zip(axes, keys):
    for name, rows in runs.items():
      pts = [(r["step"], r[key]) for r in rows if key in r]
      ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=name)
    ax.set_xlabel("iteration")
    ax.set_title(key)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def stage_times(workdir: str, report: dict) -> list[str]:
  """The wall time of each stage the pipeline runner logged (report["stage_seconds"])."""
  log = records.read_json(os.path.join(workdir, STAGE_LOG)) or {}
  if not log:
    return []
  report["stage_seconds"] = {k: v.get("seconds") for k, v in log.items()}
  total = sum(v.get("seconds") or 0 for v in log.values())
  times = ", ".join(f"{k} {v.get('seconds', 0):.0f} s" for k, v in log.items())
  return [f"Stage wall times: {times} (total {total / 60:.1f} min before this report).", ""]


def sft_lines(sft_dir: str | None, report: dict) -> list[str]:
  sft = records.read_json(os.path.join(sft_dir, "summary.json")) if sft_dir else None
  if not sft:
    return []
  report["sft"] = {k: v for k, v in sft.items() if not isinstance(v, (list, dict))}
  keys = [k for k in ("steps", "eval_loss_before", "eval_loss", "eval_accuracy_before", "eval_accuracy") if k in sft]
  return ["## SFT", "", "; ".join(f"{k} {_num(sft[k])}" for k in keys) + ".", ""]


def candidates_lines(candidates_dir: str | None, report: dict) -> list[str]:
  if not (candidates_dir and os.path.exists(os.path.join(candidates_dir, "candidates.jsonl"))):
    return []
  cands = records.read_jsonl(os.path.join(candidates_dir, "candidates.jsonl"))
  same = sum(c["response_a"] == c["response_b"] for c in cands)
  report["candidates"] = {"pairs": len(cands), "identical": same}
  return ["## Candidates", "", f"{len(cands)} pairs sampled from the SFT policy ({same} identical).", ""]


def section_definitions(key: str, out: dict) -> dict:
  """The definitions of what a section shows: labeler alignment, reward models or policies."""
  if key == "alignment":
    drawn = any(v.get("exemplar_draws") for v in out.values())
    return label_definitions(ALIGNMENT_COUNTS + ALIGNMENT_RATES) | ({"draws": jobs.DRAWS_DEFINITION} if drawn else {})
  if key == "reward_models":
    return writers.shown_definitions(reward.DEFINITIONS, RM_RATES)
  return POLICY_DEFINITIONS


def evaluation_lines(
  ev: dict, workdir: str, label_dirs, rl_dirs, rrhf_dirs, num_samples: int, report: dict, dpo_dirs=None
):
  """The evaluation's tables (as in eval.md) and a few sample generations per policy."""
  report["evaluation"] = {k: ev[k] for k in ev if k != "samples"}
  report["judge"] = {"name": ev.get("judge"), "source": ev.get("judge_source")}
  lines = ["## Evaluation", "", *judge_lines(ev, label_dirs, rl_dirs, rrhf_dirs, dpo_dirs)]
  lines += [*tables.markdown_tables(ev), "", f"![win rates]({_rel(ev['winrates_png'], workdir)})", ""]
  lines += ["## Sample generations", ""]
  for name, samples in ev["samples"].items():
    for s in samples[:num_samples]:
      prompt = s["prompt"][-300:].replace("\n", " ")
      lines += [f"**{name}** on `{s['id']}`: ...{prompt}", "", f"> {s['response'] or '(empty)'}", ""]
  report["samples"] = {n: v[:num_samples] for n, v in ev["samples"].items()}
  return lines


@stage
def run_report(
  workdir: str,
  title: str = "RLAIF pipeline",
  disclaimer: str | None = None,
  sft_dir: str | None = None,
  label_dirs: Mapping[str, str] | None = None,
  candidates_dir: str | None = None,
  rm_dirs: Mapping[str, str] | None = None,
  rl_dirs: Mapping[str, str] | None = None,
  rrhf_dirs: Mapping[str, str] | None = None,
  dpo_dirs: Mapping[str, str] | None = None,
  eval_dir: str | None = None,
  num_samples: int = 2,
) -> dict:
  """Writes <workdir>/report.md and report.json from the stage folders given (missing ones are
  left out of the report)."""
  os.makedirs(workdir, exist_ok=True)
  report: dict = {"title": title, "disclaimer": disclaimer}
  lines = [f"# {title}", "", *([f"> **{disclaimer}**", ""] if disclaimer else []), BASELINES, ""]
  lines += stage_times(workdir, report) + sft_lines(sft_dir, report) + candidates_lines(candidates_dir, report)
  definitions: dict = {}
  for (section, out), key in (
    (alignment_section(label_dirs or {}), "alignment"),
    (rm_section(rm_dirs or {}, workdir), "reward_models"),
    (policy_section(rl_dirs or {}, rrhf_dirs or {}, workdir, dpo_dirs), "policies"),
  ):
    lines += section
    report[key] = out
    definitions |= section_definitions(key, out) if section else {}
  ev = records.read_json(os.path.join(eval_dir, "eval.json")) if eval_dir else None
  if ev:
    lines += evaluation_lines(
      ev, workdir, label_dirs or {}, rl_dirs or {}, rrhf_dirs or {}, num_samples, report, dpo_dirs
    )
    definitions |= tables.definitions(ev)
  lines += writers.definitions_markdown(definitions)
  records.write_json(os.path.join(workdir, "report.json"), report)
  path = os.path.join(workdir, "report.md")
  records.write_text(path, "\n".join(lines) + "\n")
  return {"report": path, "report_json": os.path.join(workdir, "report.json")}
