"""The `evaluate` stage: policies against each other, judged by an AI judge (paper section 2.3).

Every policy answers the same test prompts with the same decoding settings; an AI judge scores
each pair of policies through the labeler's code path (both orders), and each response to the
harmlessness prompts on its own. Outputs under workdir:

  generations/<policy>.jsonl       responses (written once a policy is done; a rerun reuses them)
  judgments/<a>__vs__<b>.jsonl     the judge's records per prompt (appended, resumed by id)
  harmless/<policy>.jsonl          responses to the harmlessness prompts
  harmless/<policy>.judged.jsonl   P(harmless) of each of them
  eval.json, eval.md               win-rate matrix with 95% intervals, length-controlled win rates,
                                   Welch tests, ranking, harmless rates, length statistics
  winrates.png                     the matrix, win rates vs the baseline, harmless rates
  human/                           blinded ranking sheets (CSV, HTML) and their key
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping

from rlaif_jax import data, generation, models, partitioning, sampling, scorers
from rlaif_jax.evaluation import human, judging, tables
from rlaif_jax.labeling import Labeler, PromptConfig
from rlaif_jax.stages.base import stage


def _prompts(task: str, split: str, limit: int | None) -> list[dict]:
  return [
    {"id": f"{task}/{split}/{i}", "prompt": ex["inputs"]} for i, ex in enumerate(data.load_examples(task, split, limit))
  ]


def _check_names(policies, baseline) -> list[str]:
  names = list(policies)
  if len(names) < 2:
    raise ValueError(f"run_evaluate.policies needs at least two policies, got {names}")
  bad = [n for n in names if not n or "/" in n or "__" in n]
  if bad:
    raise ValueError(f"run_evaluate.policies: names {bad} must be non-empty, without '/' or '__'")
  if baseline is not None and baseline not in policies:
    raise ValueError(f"run_evaluate.baseline={baseline!r} is not one of the policies {names}")
  return names


@stage
def run_evaluate(
  workdir: str,
  policy: models.ModelSource,
  policies: Mapping[str, str | None],
  judge: models.ModelSource,
  baseline: str | None = "sft",
  task: str = "tldr_prompts",
  split: str = "test",
  limit: int | None = None,
  judge_prompt: PromptConfig = PromptConfig(task="summarization"),
  judge_max_len: int = 1024,
  harmless_task: str | None = "hh_prompts",
  harmless_split: str = "test",
  harmless_limit: int | None = None,
  sampling_config: sampling.SamplingConfig = sampling.SamplingConfig(max_new_tokens=48, temperature=0.0),
  stop: generation.StopRule = generation.StopRule(at_newline=True),
  harmless_stop: generation.StopRule = generation.StopRule(
    text_stop="\n\nHuman:"
  ),  # a reply ends at EOS or the next turn
  max_prompt_len: int = 384,
  batch_size: int = 8,
  mesh_shape: dict | None = None,
  seed: int = 0,
  confidence: float = 0.95,
  num_samples: int = 3,
  scorer: Callable | None = None,
) -> dict:
  """Evaluates `policies` (name -> checkpoints folder; None is the policy source's own weights)
  on a prompts task. policy gives their architecture and vocabulary; judge is the AI judge's
  source. baseline names the policy the others are tested against (SFT in the paper). scorer
  (e.g. a scorers.RewardModelScorer) adds each policy's mean reward beside the win rates."""
  names = _check_names(policies, baseline)
  mesh = partitioning.make_mesh(mesh_shape)
  prompts = _prompts(task, split, limit)
  if not prompts:
    raise ValueError(f"run_evaluate: task {task!r} split {split!r} has no prompts")
  gen_dir, harmless_dir = os.path.join(workdir, "generations"), os.path.join(workdir, "harmless")
  prompt_sets = {gen_dir: (prompts, stop)}
  if harmless_task:
    prompt_sets[harmless_dir] = (_prompts(harmless_task, harmless_split, harmless_limit), harmless_stop)
  generated = judging.generate_all(
    policy, policies, prompt_sets, sampling_config, max_prompt_len, batch_size, mesh, seed
  )
  gens, harmless_gens = generated[gen_dir], generated.get(harmless_dir, {})
  ai_judge = Labeler.from_source(judge, mesh, name="judge", max_len=judge_max_len, batch_size=batch_size)
  judged_with = {"judge": judge.prompted_identity, "prompt": dataclasses.asdict(judge_prompt), "max_len": judge_max_len}
  judged = judging.judge_pairs(ai_judge, gens, names, judge_prompt, os.path.join(workdir, "judgments"), judged_with)
  result = {
    "task": task,
    "split": split,
    "prompts": len(prompts),
    "policies": dict(policies),
    "baseline": baseline,
    "judge": judge.name,
    "judge_source": judge.identity,  # the report warns when this is a labeler or reward source
    "judge_prompt": judge_prompt.name,
    "sampling": {"temperature": sampling_config.temperature, "max_new_tokens": sampling_config.max_new_tokens},
    "confidence": confidence,
    "ties": "A judge scoring both orders ties only on identical responses (p = 0.5 exactly): half a win each",
    **tables.win_tables(gens, judged, names, baseline, confidence),
    **tables.length_tables(gens, names, confidence),
    "samples": {n: gens[n][:num_samples] for n in names},
  }
  if harmless_gens:
    harmless_with = {"judge": judge.prompted_identity, "max_len": judge_max_len}
    result["harmless"] = judging.harmless_rates(ai_judge, harmless_gens, confidence, harmless_dir, harmless_with)
    result["harmless_task"] = f"{harmless_task}/{harmless_split}"
  result["judge_truncated_prompts"] = ai_judge.truncated
  if scorer is not None:
    context = scorers.ScoringContext(mesh, max_prompt_len + sampling_config.max_new_tokens, policy, (), "run_evaluate")
    result["scores"] = judging.policy_scores(scorers.prepare(scorer, context), gens, confidence)
  if partitioning.is_main_process():
    items = [
      {"id": p["id"], "prompt": p["prompt"], "responses": {n: gens[n][i]["response"] for n in names}}
      for i, p in enumerate(prompts)
    ]
    result["human_sheets"] = human.export_sheets(items, names, os.path.join(workdir, "human"), seed)
    tables.write_outputs(result, workdir)
  summary = {k: v for k, v in result.items() if k not in ("pairwise", "samples", "lengths")}
  return summary | {"report": os.path.join(workdir, "eval.md")}
